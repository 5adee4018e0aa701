import Foundation
import SysKit

/// Where the default model lives: `models/` in the current directory, else `models/` at the repository
/// root the binary was built in (`.build/<config>/switchyard` → `../../models`).
enum ModelPath {
    static let fileName = "SmolLM2-135M-Instruct.Q4_1.gguf"

    static func resolve(_ given: String?) throws -> String {
        if let given {
            guard FileManager.default.fileExists(atPath: given) else {
                throw ValidationErrorMessage("model file not found: \(given) (run tools/fetch-model to download the default model)")
            }
            return given
        }
        var candidates = ["models/" + fileName]
        if let exe = try? currentExecutablePath() {
            // Walk up from the binary (.build/<triple>/<config>/switchyard) to the repository root.
            var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
            for _ in 0..<5 {
                dir = dir.deletingLastPathComponent()
                candidates.append(dir.path + "/models/" + fileName)
            }
        }
        if let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) { return found }
        throw ValidationErrorMessage("the default model is missing (looked for \(candidates.joined(separator: ", "))): run tools/fetch-model")
    }
}

struct ValidationErrorMessage: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}
