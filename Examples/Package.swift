// swift-tools-version: 6.1
// Two programs that use XenPV exactly as a user would: a dom0 backend process
// that links only the backends, and a guest program that links only the
// frontends. The world is chosen at start-up through XenWorld: in a Xen domain
// (when /dev/xen/evtchn exists, or with --hypervisor xen) they use Xen's own
// libraries; otherwise they join a hypervisor daemon started with
//   swift run xenpv hypervisor --socket /tmp/xen.sock
// Build them with `swift build --package-path Examples`.
import PackageDescription

let package = Package(
    name: "XenPVExamples",
    platforms: [.macOS(.v15)],
    dependencies: [.package(name: "XenPV", path: "..")],
    targets: [
        .executableTarget(
            name: "dom0-backend",
            dependencies: [
                .product(name: "XenPVBackends", package: "XenPV"),
                .product(name: "XenWorld", package: "XenPV"),
            ]),
        .executableTarget(
            name: "guest-app",
            dependencies: [
                .product(name: "XenPVFrontends", package: "XenPV"),
                .product(name: "XenWorld", package: "XenPV"),
            ]),
    ]
)
