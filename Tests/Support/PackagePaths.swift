import Foundation

/// Paths the test targets share: the package root (found by walking up from this file), the model file
/// (SWITCHYARD_MODEL, else models/ from tools/fetch-model) and the llama.cpp goldens in ../shared/fixtures.
public enum PackagePaths {
    public static let root: URL = {
        var u = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while u.path != "/" {
            if FileManager.default.fileExists(atPath: u.appendingPathComponent("Package.swift").path) { return u }
            u = u.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: "/")
    }()

    /// SWITCHYARD_MODEL, else <root>/models/SmolLM2-135M-Instruct.Q4_1.gguf (it may not exist).
    public static var model: String {
        ProcessInfo.processInfo.environment["SWITCHYARD_MODEL"]
            ?? root.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    }

    /// The llama.cpp fidelity fixtures beside the clone (../shared/fixtures).
    public static var goldens: URL {
        root.deletingLastPathComponent().appendingPathComponent("shared/fixtures/llama-cpp-goldens.json")
    }
}
