import CXen

/// A grant reference (`grant_ref_t`): an index into the granting domain's grant table.
@frozen
public struct GrantRef: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The `grant_ref_t` value: the entry's index in the granting domain's table.
    public var rawValue: UInt32
    /// Wraps a `grant_ref_t` value; whether the entry is valid is checked when it is used.
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Wraps a `grant_ref_t` value, as ``init(rawValue:)`` does.
    @inlinable public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    /// `gref:` followed by the number, for logs.
    public var description: String { "gref:\(rawValue)" }

    /// `GNTTAB_NR_RESERVED_ENTRIES`: the first entries are kept for the toolstack
    /// (console, xenstore) and never handed out by an allocator.
    public static let reservedCount = UInt32(GNTTAB_NR_RESERVED_ENTRIES)
    /// `GNTTAB_RESERVED_XENSTORE`: the entry that grants the xenstore ring page.
    public static let xenstore = GrantRef(UInt32(GNTTAB_RESERVED_XENSTORE))
    /// `GNTTAB_RESERVED_CONSOLE`: the entry that grants the console ring page.
    public static let console = GrantRef(UInt32(GNTTAB_RESERVED_CONSOLE))
}

/// A grant handle (`grant_handle_t`): names one mapping made by the mapping domain,
/// returned by a map and consumed by the matching unmap.
@frozen
public struct GrantHandle: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The `grant_handle_t` value, meaningful only to the handle that made the mapping.
    public var rawValue: UInt32
    /// Wraps a `grant_handle_t` value.
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Wraps a `grant_handle_t` value, as ``init(rawValue:)`` does.
    @inlinable public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    /// `handle:` followed by the number, for logs.
    public var description: String { "handle:\(rawValue)" }
}

/// The flags word of a v1 grant entry (`GTF_*` in `grant_table.h`).
@frozen
public struct GrantFlags: OptionSet, Hashable, Sendable {
    /// The 16-bit `flags` field of a `grant_entry_v1`.
    public var rawValue: UInt16
    /// Wraps a `flags` word as read from a grant entry.
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// `GTF_permit_access`: the grantee may map or copy the frame.
    public static let permitAccess = GrantFlags(rawValue: UInt16(GTF_permit_access))
    /// `GTF_type_mask`: the two type bits (invalid, permit, transfer, transitive).
    public static let typeMask = GrantFlags(rawValue: UInt16(GTF_type_mask))
    /// `GTF_readonly`: the grantee may only read.
    public static let readOnly = GrantFlags(rawValue: UInt16(GTF_readonly))
    /// `GTF_reading`: set by Xen while the grantee has the frame mapped.
    public static let reading = GrantFlags(rawValue: UInt16(GTF_reading))
    /// `GTF_writing`: set by Xen while the grantee has the frame mapped writable.
    public static let writing = GrantFlags(rawValue: UInt16(GTF_writing))
    /// `GTF_sub_page`: only a sub-range of the page is granted (v2 only).
    public static let subPage = GrantFlags(rawValue: UInt16(GTF_sub_page))

    /// True when the entry's type is `GTF_permit_access`.
    @inlinable public var permitsAccess: Bool {
        rawValue & GrantFlags.typeMask.rawValue == GrantFlags.permitAccess.rawValue
    }
    /// True while Xen holds the entry in use (`GTF_reading | GTF_writing`).
    @inlinable public var isInUse: Bool { !intersection([.reading, .writing]).isEmpty }
}
