import CXen
import Testing
import XenABI

/// The typed wrappers carry exactly the values Xen's headers define.
@Suite(.timeLimit(.minutes(5)))
struct TypedIntegersTests {
    @Test func xenbusStatesMatchTheHeaderEnum() {
        let pairs: [(XenABI.XenbusState, xenbus_state)] = [
            (.unknown, XenbusStateUnknown), (.initialising, XenbusStateInitialising),
            (.initWait, XenbusStateInitWait), (.initialised, XenbusStateInitialised),
            (.connected, XenbusStateConnected), (.closing, XenbusStateClosing),
            (.closed, XenbusStateClosed), (.reconfiguring, XenbusStateReconfiguring),
            (.reconfigured, XenbusStateReconfigured),
        ]
        #expect(pairs.count == XenABI.XenbusState.allCases.count)
        for (swift, c) in pairs { #expect(swift.rawValue == c.rawValue) }
        #expect(XenABI.XenbusState(xenstoreValue: "4") == .connected)
        #expect(XenABI.XenbusState(xenstoreValue: "9") == nil)
        #expect(XenABI.XenbusState(xenstoreValue: " 4") == nil)
    }

    @Test func grantStatusesAreXensCodesAndMessages() {
        #expect(GrantStatus.okay.rawValue == 0)
        #expect(GrantStatus.noSpace.rawValue == -13)
        #expect(GrantStatus.badGrantRef.description == "invalid grant reference")
        #expect(GrantStatus.permissionDenied.description == "permission denied")
        #expect(GrantStatus(rawValue: -99).description == "unknown grant status -99")
    }

    @Test func grantFlagsFollowGrantTableH() {
        #expect(GrantFlags.permitAccess.rawValue == 1)
        #expect(GrantFlags.readOnly.rawValue == 1 << 2)
        #expect(GrantFlags([.permitAccess, .reading]).permitsAccess)
        #expect(GrantFlags([.permitAccess, .writing]).isInUse)
        #expect(!GrantFlags([.permitAccess, .readOnly]).isInUse)
        #expect(!GrantFlags(rawValue: 2).permitsAccess)  // GTF_accept_transfer
    }

    @Test func domainIDsAndRingIndices() {
        #expect(DomainID.current.rawValue == 0x7FF0)  // DOMID_SELF == DOMID_FIRST_RESERVED in xen.h
        #expect(DomainID.firstReserved.rawValue == 0x7FF0)
        #expect(DomainID(5).isGuestDomain && !DomainID.current.isGuestDomain)
        let nearWrap = RingIndex(UInt32.max - 1)
        #expect((nearWrap + 3).rawValue == 1)
        #expect((nearWrap + 3) - nearWrap == 3)
        #expect(EventPort.twoLevelLimit == 4096)
        #expect(cxen_sring_header_size == 64)
    }
}
