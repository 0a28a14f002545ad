@main struct XenStoreBench { static func main() {} }
