import CXen

/// A grant-table operation status (`GNTST_*` in `grant_table.h`): 0 is success,
/// negative values are Xen's error codes.
@frozen
public struct GrantStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The `int16_t` status as Xen writes it into a grant-table operation's `status` field.
    public var rawValue: Int16
    /// Wraps a status; values outside Xen's list print as "unknown grant status".
    @inlinable public init(rawValue: Int16) { self.rawValue = rawValue }

    /// `GNTST_okay`
    public static let okay = GrantStatus(rawValue: Int16(GNTST_okay))
    /// `GNTST_general_error`
    public static let generalError = GrantStatus(rawValue: Int16(GNTST_general_error))
    /// `GNTST_bad_domain`: unrecognised domain id.
    public static let badDomain = GrantStatus(rawValue: Int16(GNTST_bad_domain))
    /// `GNTST_bad_gntref`: unrecognised or inappropriate grant reference.
    public static let badGrantRef = GrantStatus(rawValue: Int16(GNTST_bad_gntref))
    /// `GNTST_bad_handle`: unrecognised or inappropriate mapping handle.
    public static let badHandle = GrantStatus(rawValue: Int16(GNTST_bad_handle))
    /// `GNTST_bad_virt_addr`
    public static let badVirtualAddress = GrantStatus(rawValue: Int16(GNTST_bad_virt_addr))
    /// `GNTST_bad_dev_addr`
    public static let badDeviceAddress = GrantStatus(rawValue: Int16(GNTST_bad_dev_addr))
    /// `GNTST_no_device_space`
    public static let noDeviceSpace = GrantStatus(rawValue: Int16(GNTST_no_device_space))
    /// `GNTST_permission_denied`: not enough privilege for the operation.
    public static let permissionDenied = GrantStatus(rawValue: Int16(GNTST_permission_denied))
    /// `GNTST_bad_page`: the frame is not valid for the operation.
    public static let badPage = GrantStatus(rawValue: Int16(GNTST_bad_page))
    /// `GNTST_bad_copy_arg`: copy arguments cross a page boundary.
    public static let badCopyArgument = GrantStatus(rawValue: Int16(GNTST_bad_copy_arg))
    /// `GNTST_address_too_big`
    public static let addressTooBig = GrantStatus(rawValue: Int16(GNTST_address_too_big))
    /// `GNTST_eagain`: operation not done; try again.
    public static let tryAgain = GrantStatus(rawValue: Int16(GNTST_eagain))
    /// `GNTST_no_space`: out of space (handles, maptrack entries).
    public static let noSpace = GrantStatus(rawValue: Int16(GNTST_no_space))

    /// True for `GNTST_okay` (0).
    @inlinable public var isOkay: Bool { rawValue == 0 }

    /// Xen's own message for the status (`GNTTABOP_error_msgs`).
    public var description: String {
        let messages = [
            "okay", "undefined error", "unrecognised domain id", "invalid grant reference",
            "invalid mapping handle", "invalid virtual address", "invalid device address",
            "no spare translation slot in the I/O MMU", "permission denied", "bad page",
            "copy arguments cross page boundary", "page address size too large",
            "operation not done; try again", "out of space",
        ]
        let index = -Int(rawValue)
        return messages.indices.contains(index) ? messages[index] : "unknown grant status \(rawValue)"
    }
}
