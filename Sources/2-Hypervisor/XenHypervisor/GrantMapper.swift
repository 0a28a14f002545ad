import XenABI

/// Granted frames of another domain mapped into this process: the result of
/// `xengnttab_map_grant_ref(s)`.
public struct GrantMapping: Sendable, Hashable {
    /// The granting domain.
    public let domain: DomainID
    /// The mapped pages, in the order of the references asked for.
    public let memory: MappedPages
    /// Names this mapping for `unmap`.
    public let handle: GrantHandle
    /// Whether the mapping is writable.
    public let writable: Bool

    /// Describes a mapping; made by a ``GrantMapper`` implementation, which owns the memory until ``GrantMapper/unmap(_:)``.
    public init(domain: DomainID, memory: MappedPages, handle: GrantHandle, writable: Bool) {
        self.domain = domain
        self.memory = memory
        self.handle = handle
        self.writable = writable
    }
}

/// One segment of a grant copy (`xengnttab_grant_copy_segment`). Each end is
/// either a buffer in this process or an offset into a frame another domain
/// granted; `offset + length` must stay within the 4 KiB frame.
public struct GrantCopySegment: @unchecked Sendable {
    // @unchecked: `.local` carries a raw address owned by the caller.
    /// One end of a copy: memory in this process or a range of a frame another domain granted.
    public enum End: Hashable {
        /// Memory in this process.
        case local(UnsafeMutableRawPointer)
        /// `offset` bytes into the frame `ref` of `domain` grants.
        case foreign(domain: DomainID, ref: GrantRef, offset: UInt16)
    }

    /// Where the bytes are read from.
    public var source: End
    /// Where the bytes are written to.
    public var destination: End
    /// Bytes to copy; with either end's offset it must stay within one 4 KiB frame (`GNTST_bad_copy_arg` otherwise).
    public var length: UInt16
    /// Set by the copy: `.okay` or the Xen status of this segment alone.
    public var status: GrantStatus

    /// A segment to copy, its ``status`` preset to `.generalError` until the copy sets it.
    public init(source: End, destination: End, length: UInt16) {
        self.source = source
        self.destination = destination
        self.length = length
        self.status = .generalError
    }
}

/// The mapping side of the grant table, shaped like `xengnttab`.
public protocol GrantMapper: AnyObject, Sendable {
    /// Maps one granted frame of `domain` (`xengnttab_map_grant_ref`).
    func map(_ ref: GrantRef, from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping
    /// Maps several granted frames of `domain` contiguously, in order
    /// (`xengnttab_map_domain_grant_refs`). All or nothing: if any entry fails,
    /// nothing stays mapped and the error names the first bad entry's status.
    func map(_ refs: UnsafeBufferPointer<GrantRef>, from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping
    /// Removes a mapping (`xengnttab_unmap`); `GNTST_bad_handle` for one this
    /// handle did not make or already removed.
    func unmap(_ mapping: GrantMapping) throws(HypervisorError)
    /// Copies each segment and sets its own status (`xengnttab_grant_copy`). A
    /// bad segment fails alone; the call throws only if the handle is unusable.
    func copy(_ segments: UnsafeMutableBufferPointer<GrantCopySegment>) throws(HypervisorError)
    /// Releases the handle. Mappings still present are reported as leftovers.
    func close()
}

extension GrantMapper {
    /// Maps `refs`, a convenience for set-up paths.
    public func map(_ refs: [GrantRef], from domain: DomainID, writable: Bool) throws(HypervisorError) -> GrantMapping {
        // A closure cannot carry a typed throw through withUnsafeBufferPointer, so
        // the result is carried out as a Result.
        let result: Result<GrantMapping, HypervisorError> = refs.withUnsafeBufferPointer { buffer in
            do throws(HypervisorError) {
                return .success(try map(buffer, from: domain, writable: writable))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }
}
