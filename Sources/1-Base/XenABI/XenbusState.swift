import CXen

/// The device state every XenBus endpoint publishes in its `state` key
/// (`enum xenbus_state` in `io/xenbus.h`).
@frozen
public enum XenbusState: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    /// `XenbusStateUnknown`
    case unknown = 0
    /// `XenbusStateInitialising`
    case initialising = 1
    /// `XenbusStateInitWait`: finished early initialisation, waiting for the peer.
    case initWait = 2
    /// `XenbusStateInitialised`: ready, waiting for the peer to connect.
    case initialised = 3
    /// `XenbusStateConnected`
    case connected = 4
    /// `XenbusStateClosing`: the device is going away.
    case closing = 5
    /// `XenbusStateClosed`
    case closed = 6
    /// `XenbusStateReconfiguring`
    case reconfiguring = 7
    /// `XenbusStateReconfigured`
    case reconfigured = 8

    /// The state's name without the `XenbusState` prefix (`Connected`), for logs and listings.
    public var description: String {
        switch self {
        case .unknown: "Unknown"
        case .initialising: "Initialising"
        case .initWait: "InitWait"
        case .initialised: "Initialised"
        case .connected: "Connected"
        case .closing: "Closing"
        case .closed: "Closed"
        case .reconfiguring: "Reconfiguring"
        case .reconfigured: "Reconfigured"
        }
    }

    /// Parses the decimal form xenstore holds (`"4"`); nil for anything else.
    public init?(xenstoreValue: String) {
        guard let raw = UInt32(xenstoreValue), let state = XenbusState(rawValue: raw) else { return nil }
        self = state
    }
    /// The decimal form written to xenstore.
    public var xenstoreValue: String { String(rawValue) }
}
