/// A guest's disk name and the device number libxl writes as `virtual-device`,
/// per Xen's VBD interface (docs/misc/vbd-interface) and libxl's
/// `libxl__device_disk_dev_number`:
///
/// | name | number |
/// | --- | --- |
/// | `xvd` DISK [PART], disk ≤ 15, part ≤ 15 | `(202 << 8) \| (disk << 4) \| part` |
/// | `xvd` DISK [PART], disk < 2^20, part ≤ 255 | `(1 << 28) \| (disk << 8) \| part` (extended) |
/// | `d` N `p` P, N < 2^20, P ≤ 255 | as `xvd` with decimal disk and partition (`d0p0` is xvda) |
/// | `hd` DISK [PART], disk ≤ 3, part ≤ 63 | major 3 (hda, hdb) or 22 (hdc, hdd), minor `(disk % 2) << 6 \| part` |
/// | `sd` DISK [PART], disk ≤ 15, part ≤ 15 | `(8 << 8) \| (disk << 4) \| part` |
///
/// DISK letters count a = 0 … z = 25, aa = 26 …; PART is a decimal from 1 without
/// leading zeros, absent for the whole disk. So xvda is 51712 and xvdb 51728;
/// xvdq, the seventeenth disk, takes the extended scheme. Refused where libxl is
/// looser: a bare device number (libxl passes it through undecoded) and leading
/// zeros in `dNpP` (libxl's `%i` reads them as octal).
public struct VirtualDiskDevice: Hashable, Sendable, CustomStringConvertible {
    /// The name as written in the config (`xvda`, `hdc1`).
    public var name: String
    /// The device number (`virtual-device` in the backend's and frontend's xenstore directories).
    public var number: UInt32
    /// The disk index (a = 0).
    public var disk: UInt32
    /// The partition (0 for the whole disk).
    public var partition: UInt32

    /// The name.
    public var description: String { name }

    /// Parses a name as libxl does; the error has no location.
    public init(name: String) throws(DomainConfigError) {
        self.name = name
        func refuse() -> DomainConfigError {
            DomainConfigError(
                .invalidValue,
                "vdev \(quoted(name)) is not a disk name; use xvdX (xvda … xvdp, or more letters), hdX (hda … hdd) or sdX (sda … sdp), each optionally with a partition number from 1, or dNpP")
        }
        let bytes = Array(name.utf8)
        var cursor = 0
        /// Drive letters a … z as bijective base 26, at most `maximum`.
        func letters(maximum: UInt32) -> UInt32? {
            var value: UInt32 = 0
            let start = cursor
            while cursor < bytes.count, bytes[cursor] >= UInt8(ascii: "a"), bytes[cursor] <= UInt8(ascii: "z") {
                // value ≤ maximum + 1 < 2^21 here, so × 26 + 26 cannot overflow.
                value = value * 26 + UInt32(bytes[cursor] - UInt8(ascii: "a")) + 1
                guard value - 1 <= maximum else { return nil }
                cursor += 1
            }
            return cursor == start ? nil : value - 1
        }
        func decimal(allowZero: Bool) -> UInt32? {
            let start = cursor
            var value: UInt32 = 0
            while cursor < bytes.count, bytes[cursor] >= UInt8(ascii: "0"), bytes[cursor] <= UInt8(ascii: "9") {
                guard cursor - start < 8 else { return nil }
                value = value * 10 + UInt32(bytes[cursor] - UInt8(ascii: "0"))
                cursor += 1
            }
            guard cursor > start else { return nil }
            if bytes[start] == UInt8(ascii: "0") && (cursor - start > 1 || !allowZero) { return nil }
            return value
        }
        /// An optional partition at the end: nil when malformed, 0 when absent.
        func partitionAtEnd() -> UInt32? {
            if cursor == bytes.count { return 0 }
            guard let part = decimal(allowZero: false), cursor == bytes.count else { return nil }
            return part
        }

        let disk: UInt32
        let part: UInt32
        let number: UInt32
        if name.hasPrefix("xvd") || name.hasPrefix("d") {
            if name.hasPrefix("xvd") {
                cursor = 3
                guard let d = letters(maximum: (1 << 20) - 1), let p = partitionAtEnd() else { throw refuse() }
                disk = d
                part = p
            } else {
                cursor = 1
                guard let d = decimal(allowZero: true), cursor < bytes.count, bytes[cursor] == UInt8(ascii: "p") else {
                    throw refuse()
                }
                cursor += 1
                guard let p = decimal(allowZero: true), cursor == bytes.count else { throw refuse() }
                disk = d
                part = p
            }
            if disk < 16 && part < 16 {
                number = (202 << 8) | (disk << 4) | part
            } else if disk < (1 << 20) && part < 256 {
                number = (1 << 28) | (disk << 8) | part
            } else {
                throw DomainConfigError(
                    .invalidValue, "vdev \(quoted(name)) is out of range: at most 2^20 disks of 255 partitions")
            }
        } else if name.hasPrefix("hd") {
            cursor = 2
            guard let d = letters(maximum: 3), let p = partitionAtEnd() else { throw refuse() }
            guard d < 4, p < 64 else {
                throw DomainConfigError(.invalidValue, "vdev \(quoted(name)) is out of range: hda … hdd, partitions 1 … 63")
            }
            disk = d
            part = p
            number = ((d < 2 ? 3 : 22) << 8) | ((d & 1) << 6) | p
        } else if name.hasPrefix("sd") {
            cursor = 2
            guard let d = letters(maximum: 15), let p = partitionAtEnd() else { throw refuse() }
            guard d < 16, p < 16 else {
                throw DomainConfigError(.invalidValue, "vdev \(quoted(name)) is out of range: sda … sdp, partitions 1 … 15")
            }
            disk = d
            part = p
            number = (8 << 8) | (d << 4) | p
        } else {
            throw refuse()
        }
        self.disk = disk
        self.partition = part
        self.number = number
    }
}
