import XenABI

/// One record of a migration stream: what save, restore and migration move of a
/// domain, each in its own typed record, in the order the sender chooses after
/// the first (``domain(_:)``) and before the last (``end``).
public enum MigrationRecord: Sendable, Hashable {
    /// The domain's shape: its id on the source, memory size, grant table size, name.
    case domain(MigrationDomainInfo)
    /// Frames of memory with their contents (a pre-copy round sends several).
    case pages(MigrationPageBatch)
    /// Entries of the domain's grant table in use.
    case grants([MigrationGrantEntry])
    /// The domain's event-channel ports and what each is bound to.
    case eventChannels([MigrationEventChannel])
    /// Nodes of the domain's store subtree.
    case store([MigrationStoreEntry])
    /// One split device's configuration (its backend's keys).
    case device(MigrationDevice)
    /// The end of the stream: nothing may follow.
    case end

    /// The record's type on the wire.
    public var type: MigrationRecordType {
        switch self {
        case .domain: .domain
        case .pages: .pages
        case .grants: .grants
        case .eventChannels: .eventChannels
        case .store: .store
        case .device: .device
        case .end: .end
        }
    }
}

/// A record's type number, the first field of its header.
public enum MigrationRecordType: UInt32, Sendable, CaseIterable {
    /// ``MigrationRecord/end``.
    case end = 0
    /// ``MigrationRecord/domain(_:)``.
    case domain = 1
    /// ``MigrationRecord/pages(_:)``.
    case pages = 2
    /// ``MigrationRecord/grants(_:)``.
    case grants = 3
    /// ``MigrationRecord/eventChannels(_:)``.
    case eventChannels = 4
    /// ``MigrationRecord/store(_:)``.
    case store = 5
    /// ``MigrationRecord/device(_:)``.
    case device = 6
}

/// What a domain is, for the receiver to create its like.
public struct MigrationDomainInfo: Sendable, Hashable {
    /// The domain's id on the sender (the receiver may give another).
    public var domain: DomainID
    /// Frames of memory the domain owns.
    public var frameCount: UInt64
    /// Frames of its grant table.
    public var grantFrames: UInt32
    /// Its name (UTF-8, no NUL, at most ``MigrationLimits/maximumName`` bytes).
    public var name: String

    /// Describes a domain.
    public init(domain: DomainID, frameCount: UInt64, grantFrames: UInt32, name: String) {
        self.domain = domain
        self.frameCount = frameCount
        self.grantFrames = grantFrames
        self.name = name
    }
}

/// Frames and their contents: 1 to ``MigrationLimits/maximumPagesPerBatch`` pages.
public struct MigrationPageBatch: Sendable, Hashable {
    /// The frames, in the order of their pages in ``data``.
    public let frames: [FrameNumber]
    /// `frames.count` pages of 4096 bytes each.
    public let data: [UInt8]

    /// A batch; throws `.badValue` unless there are 1 to 1024 frames, no frame twice,
    /// and 4096 bytes of data per frame.
    public init(frames: [FrameNumber], data: [UInt8]) throws(MigrationStreamError) {
        guard (1...MigrationLimits.maximumPagesPerBatch).contains(frames.count) else {
            throw MigrationStreamError(.badValue, "page batch: \(frames.count) frames, not 1 to \(MigrationLimits.maximumPagesPerBatch)")
        }
        guard data.count == frames.count * MigrationLimits.pageSize else {
            throw MigrationStreamError(.inconsistentLength, "page batch: \(data.count) bytes for \(frames.count) frames")
        }
        guard Set(frames).count == frames.count else { throw MigrationStreamError(.badValue, "page batch: a frame appears twice") }
        self.frames = frames
        self.data = data
    }

    /// The contents of the `index`th frame of the batch.
    public func page(_ index: Int) -> ArraySlice<UInt8> {
        data[index * MigrationLimits.pageSize..<(index + 1) * MigrationLimits.pageSize]
    }
}

/// One `grant_entry_v1` in use, by reference.
public struct MigrationGrantEntry: Sendable, Hashable {
    /// The entry's index in the table.
    public var ref: GrantRef
    /// Its `flags` (`GTF_permit_access`, `GTF_readonly`, …).
    public var flags: UInt16
    /// The domain it grants to.
    public var grantee: DomainID
    /// The frame it names.
    public var frame: FrameNumber

    /// Describes an entry.
    public init(ref: GrantRef, flags: UInt16, grantee: DomainID, frame: FrameNumber) {
        self.ref = ref
        self.flags = flags
        self.grantee = grantee
        self.frame = frame
    }
}

/// One event-channel port of the domain and its binding.
public struct MigrationEventChannel: Sendable, Hashable {
    /// What the port is bound to.
    public enum Binding: Sendable, Hashable {
        /// Allocated for `remote` to bind (`EVTCHNOP_alloc_unbound`).
        case unbound(remote: DomainID)
        /// Connected to `remotePort` of `remote`.
        case interdomain(remote: DomainID, remotePort: EventPort)
    }

    /// The port, local to the domain.
    public var port: EventPort
    /// Its binding.
    public var binding: Binding

    /// Describes a port.
    public init(port: EventPort, binding: Binding) {
        self.port = port
        self.binding = binding
    }
}

/// One node of the domain's store subtree.
public struct MigrationStoreEntry: Sendable, Hashable {
    /// The node's path (UTF-8, no NUL, at most ``MigrationLimits/maximumPath`` bytes).
    public var path: String
    /// Its value (at most ``MigrationLimits/maximumValue`` bytes, any bytes).
    public var value: [UInt8]
    /// Its permissions as `xenstore-ls -p` prints them (`n0`, `r1`, …; at most ``MigrationLimits/maximumName`` bytes).
    public var permissions: String

    /// Describes a node.
    public init(path: String, value: [UInt8], permissions: String) {
        self.path = path
        self.value = value
        self.permissions = permissions
    }
}

/// One split device: its class, its number and its backend's configuration keys.
public struct MigrationDevice: Sendable, Hashable {
    /// The device class (`vbd`, `vif`; at most ``MigrationLimits/maximumName`` bytes).
    public var type: String
    /// The device number (`51712` for xvda, a vif's index).
    public var id: UInt32
    /// Key and value pairs (`params`, `mode`, `mac`, …), in order, at most ``MigrationLimits/maximumDeviceKeys``.
    public var keys: [Key]

    /// One configuration key.
    public struct Key: Sendable, Hashable {
        /// The key's name (at most ``MigrationLimits/maximumName`` bytes).
        public var name: String
        /// Its value (at most ``MigrationLimits/maximumValue`` bytes).
        public var value: String

        /// A key and its value.
        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    /// Describes a device.
    public init(type: String, id: UInt32, keys: [Key]) {
        self.type = type
        self.id = id
        self.keys = keys
    }
}

/// The bounds every stream keeps: a decoder refuses anything beyond them before
/// it buffers it.
public enum MigrationLimits {
    /// The page size of every frame in a stream.
    public static let pageSize = 4096
    /// Pages in one ``MigrationPageBatch``.
    public static let maximumPagesPerBatch = 1024
    /// Bytes of a store path (xenstore's `XENSTORE_ABS_PATH_MAX`).
    public static let maximumPath = 3072
    /// Bytes of a store or device value (`XENSTORE_PAYLOAD_MAX`).
    public static let maximumValue = 4096
    /// Bytes of a name (a domain's, a device class, a key, a permission string).
    public static let maximumName = 256
    /// Keys of one device.
    public static let maximumDeviceKeys = 256
    /// Bytes of one record's body: a full page batch and its frame numbers, with room to spare.
    public static let maximumRecordBody = 8 + maximumPagesPerBatch * (8 + pageSize)
}
