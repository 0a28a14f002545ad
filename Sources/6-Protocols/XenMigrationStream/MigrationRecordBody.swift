import XenABI

/// Each record's body on the wire (little-endian, no padding):
///
/// | record | body |
/// | --- | --- |
/// | end | nothing |
/// | domain | domid u16, name length u16, grant frames u32, frames u64, name |
/// | pages | count u32, reserved u32, count frame numbers u64, count pages of 4096 bytes |
/// | grants | count u32, count × (ref u32, flags u16, grantee u16, frame u64) |
/// | eventChannels | count u32, count × (port u32, kind u16 (1 unbound, 2 interdomain), remote u16, remote port u32) |
/// | store | count u32, count × (path length u16, permissions length u16, value length u32, path, permissions, value) |
/// | device | type length u16, key count u16, id u32, type, key count × (name length u16, value length u16, name, value) |
extension MigrationRecord {
    /// The body's bytes; throws for a value no decoder would accept back.
    func body() throws(MigrationStreamError) -> [UInt8] {
        var w = MigrationWriter()
        switch self {
        case .end:
            break
        case .domain(let d):
            let name = try MigrationWriter.string(d.name, limit: MigrationLimits.maximumName, "domain: name")
            w.integer(d.domain.rawValue)
            w.integer(UInt16(name.count))
            w.integer(d.grantFrames)
            w.integer(d.frameCount)
            w.append(name)
        case .pages(let batch):
            w.bytes.reserveCapacity(8 + batch.frames.count * (8 + MigrationLimits.pageSize))
            w.integer(UInt32(batch.frames.count))
            w.integer(UInt32(0))
            for f in batch.frames { w.integer(f.rawValue) }
            w.append(batch.data)
        case .grants(let entries):
            try Self.checkCount(entries.count, size: 16, "grants")
            w.integer(UInt32(entries.count))
            for e in entries {
                w.integer(e.ref.rawValue)
                w.integer(e.flags)
                w.integer(e.grantee.rawValue)
                w.integer(e.frame.rawValue)
            }
        case .eventChannels(let channels):
            try Self.checkCount(channels.count, size: 12, "event channels")
            w.integer(UInt32(channels.count))
            for c in channels {
                w.integer(c.port.rawValue)
                switch c.binding {
                case .unbound(let remote):
                    w.integer(UInt16(1))
                    w.integer(remote.rawValue)
                    w.integer(UInt32(0))
                case .interdomain(let remote, let remotePort):
                    w.integer(UInt16(2))
                    w.integer(remote.rawValue)
                    w.integer(remotePort.rawValue)
                }
            }
        case .store(let entries):
            w.integer(UInt32(entries.count))
            for e in entries {
                let path = try MigrationWriter.string(e.path, limit: MigrationLimits.maximumPath, "store: path")
                let perms = try MigrationWriter.string(e.permissions, limit: MigrationLimits.maximumName, "store: permissions")
                guard e.value.count <= MigrationLimits.maximumValue else {
                    throw MigrationStreamError(.tooLong, "store: value of \(e.path): \(e.value.count) bytes")
                }
                w.integer(UInt16(path.count))
                w.integer(UInt16(perms.count))
                w.integer(UInt32(e.value.count))
                w.append(path)
                w.append(perms)
                w.append(e.value)
            }
        case .device(let d):
            let type = try MigrationWriter.string(d.type, limit: MigrationLimits.maximumName, "device: type")
            guard d.keys.count <= MigrationLimits.maximumDeviceKeys else {
                throw MigrationStreamError(.tooLong, "device: \(d.keys.count) keys")
            }
            w.integer(UInt16(type.count))
            w.integer(UInt16(d.keys.count))
            w.integer(d.id)
            w.append(type)
            for k in d.keys {
                let name = try MigrationWriter.string(k.name, limit: MigrationLimits.maximumName, "device: key")
                let value = try MigrationWriter.string(k.value, limit: MigrationLimits.maximumValue, "device: value of \(k.name)")
                w.integer(UInt16(name.count))
                w.integer(UInt16(value.count))
                w.append(name)
                w.append(value)
            }
        }
        guard w.bytes.count <= MigrationLimits.maximumRecordBody else {
            throw MigrationStreamError(.tooLong, "\(type) record: \(w.bytes.count) bytes, more than \(MigrationLimits.maximumRecordBody)")
        }
        return w.bytes
    }

    private static func checkCount(_ count: Int, size: Int, _ what: String) throws(MigrationStreamError) {
        guard count <= (MigrationLimits.maximumRecordBody - 4) / size else {
            throw MigrationStreamError(.tooLong, "\(what): \(count) entries do not fit in one record")
        }
    }

    /// Decodes the body of a record of `type`.
    static func decode(type: MigrationRecordType, body: ArraySlice<UInt8>) throws(MigrationStreamError) -> MigrationRecord {
        var r = MigrationReader(body, record: "\(type) record")
        let record: MigrationRecord
        switch type {
        case .end:
            record = .end
        case .domain:
            let id = try r.integer(UInt16.self, "domid")
            let nameLength = try r.integer(UInt16.self, "name length")
            let grantFrames = try r.integer(UInt32.self, "grant frames")
            let frames = try r.integer(UInt64.self, "frames")
            let name = try r.string(Int(nameLength), limit: MigrationLimits.maximumName, "name")
            guard id < DomainID.firstReserved.rawValue else { throw MigrationStreamError(.badValue, "domain record: domid \(id) is reserved") }
            record = .domain(MigrationDomainInfo(domain: DomainID(id), frameCount: frames, grantFrames: grantFrames, name: name))
        case .pages:
            let count = Int(try r.integer(UInt32.self, "count"))
            try r.reserved(UInt32.self, "reserved")
            try r.expect(count, of: 8 + MigrationLimits.pageSize, "pages")
            var frames: [FrameNumber] = []
            frames.reserveCapacity(count)
            for _ in 0..<count { frames.append(FrameNumber(try r.integer(UInt64.self, "frame"))) }
            let data = Array(try r.bytes(count * MigrationLimits.pageSize, "page data"))
            record = .pages(try MigrationPageBatch(frames: frames, data: data))
        case .grants:
            let count = Int(try r.integer(UInt32.self, "count"))
            try r.expect(count, of: 16, "grant entries")
            var entries: [MigrationGrantEntry] = []
            entries.reserveCapacity(count)
            for _ in 0..<count {
                let ref = try r.integer(UInt32.self, "ref")
                let flags = try r.integer(UInt16.self, "flags")
                let grantee = try r.integer(UInt16.self, "grantee")
                let frame = try r.integer(UInt64.self, "frame")
                entries.append(MigrationGrantEntry(ref: GrantRef(ref), flags: flags, grantee: DomainID(grantee), frame: FrameNumber(frame)))
            }
            record = .grants(entries)
        case .eventChannels:
            let count = Int(try r.integer(UInt32.self, "count"))
            try r.expect(count, of: 12, "event channels")
            var channels: [MigrationEventChannel] = []
            channels.reserveCapacity(count)
            for _ in 0..<count {
                let port = try r.integer(UInt32.self, "port")
                let kind = try r.integer(UInt16.self, "kind")
                let remote = DomainID(try r.integer(UInt16.self, "remote"))
                let remotePort = try r.integer(UInt32.self, "remote port")
                switch kind {
                case 1:
                    guard remotePort == 0 else { throw MigrationStreamError(.badValue, "event channel \(port): unbound with a remote port") }
                    channels.append(MigrationEventChannel(port: EventPort(port), binding: .unbound(remote: remote)))
                case 2:
                    channels.append(MigrationEventChannel(port: EventPort(port), binding: .interdomain(remote: remote, remotePort: EventPort(remotePort))))
                default:
                    throw MigrationStreamError(.badValue, "event channel \(port): kind \(kind)")
                }
            }
            record = .eventChannels(channels)
        case .store:
            let count = Int(try r.integer(UInt32.self, "count"))
            try r.expect(count, of: 8, "store entries")
            var entries: [MigrationStoreEntry] = []
            for _ in 0..<count {
                let pathLength = try r.integer(UInt16.self, "path length")
                let permsLength = try r.integer(UInt16.self, "permissions length")
                let valueLength = try r.integer(UInt32.self, "value length")
                let path = try r.string(Int(pathLength), limit: MigrationLimits.maximumPath, "path")
                let perms = try r.string(Int(permsLength), limit: MigrationLimits.maximumName, "permissions of \(path)")
                guard valueLength <= UInt32(MigrationLimits.maximumValue) else {
                    throw MigrationStreamError(.tooLong, "store record: value of \(path): \(valueLength) bytes")
                }
                let value = Array(try r.bytes(Int(valueLength), "value of \(path)"))
                entries.append(MigrationStoreEntry(path: path, value: value, permissions: perms))
            }
            record = .store(entries)
        case .device:
            let typeLength = try r.integer(UInt16.self, "type length")
            let keyCount = Int(try r.integer(UInt16.self, "key count"))
            let id = try r.integer(UInt32.self, "id")
            let deviceType = try r.string(Int(typeLength), limit: MigrationLimits.maximumName, "type")
            guard keyCount <= MigrationLimits.maximumDeviceKeys else {
                throw MigrationStreamError(.tooLong, "device record: \(keyCount) keys")
            }
            try r.expect(keyCount, of: 4, "keys")
            var keys: [MigrationDevice.Key] = []
            for _ in 0..<keyCount {
                let nameLength = try r.integer(UInt16.self, "key length")
                let valueLength = try r.integer(UInt16.self, "value length")
                let name = try r.string(Int(nameLength), limit: MigrationLimits.maximumName, "key")
                let value = try r.string(Int(valueLength), limit: MigrationLimits.maximumValue, "value of \(name)")
                keys.append(MigrationDevice.Key(name, value))
            }
            record = .device(MigrationDevice(type: deviceType, id: id, keys: keys))
        }
        try r.expectEnd()
        return record
    }
}
