import XenStore
