// The hypervisor daemon's wire protocol: one SOCK_SEQPACKET record as a peer
// sends it (a client to the daemon, or the daemon's reply to a client).
//
// Input: one record, at most WireMessage.maxBytes. Invariants: decoding never
// traps; a decoded message re-encodes to a record that decodes to the same
// words and text (and to the same bytes when the text is valid UTF-8); the
// reply accessors a client uses (`error`, DaemonReport) never trap on any words.
//
// WireMessage and DaemonReport.init(words:) are internal: `@testable import`
// reaches them, which works because the root package's debug build is compiled
// with -enable-testing (run.sh builds debug).
@testable import XenSimulatorClient
@testable import XenSimulatorDaemon

func fuzzOne(_ input: UnsafeRawBufferPointer) {
    let record = UnsafeRawBufferPointer(rebasing: input.prefix(WireMessage.maxBytes))
    guard let message = WireMessage.decode(record, fds: []) else {
        let n = record.count >= 4 ? Int(record.loadUnaligned(as: UInt32.self).littleEndian) : -1
        precondition(record.count < 4 || n > (record.count - 4) / 8, "refused a well-formed record")
        return
    }
    precondition(message.words.count * 8 + 4 <= record.count)
    let encoded = message.encoded()
    let again = encoded.withUnsafeBytes { WireMessage.decode($0, fds: []) }
    guard let again else { preconditionFailure("re-encoded record does not decode") }
    precondition(again.words == message.words && again.text == message.text, "round trip changed the message")
    let textBytes = record[(4 + message.words.count * 8)...]
    if String(validating: textBytes, as: UTF8.self) != nil {
        precondition(encoded.elementsEqual(record), "valid record does not re-encode to its bytes")
    }
    // What a client makes of any reply.
    _ = message.error
    _ = try? DaemonReport(words: message.words)
    if let op = message.words.first.flatMap(DaemonOp.init(rawValue:)) { _ = op }
}
