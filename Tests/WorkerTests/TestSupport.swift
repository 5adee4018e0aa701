import Foundation
import SwitchyardTestSupport

/// Paths the worker tests share (see PackagePaths).
enum WorkerTestPaths {
    static var model: String { PackagePaths.model }
    static var goldens: URL { PackagePaths.goldens }
}
