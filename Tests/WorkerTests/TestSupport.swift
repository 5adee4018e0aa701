import Foundation

/// Paths the worker tests share: the package root (found by walking up from this file), the model file
/// (SWITCHYARD_MODEL, else models/ from tools/fetch-model) and the llama.cpp goldens in ../shared/fixtures.
enum WorkerTestPaths {
    static let root: URL = {
        var u = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while u.path != "/" {
            if FileManager.default.fileExists(atPath: u.appendingPathComponent("Package.swift").path) { return u }
            u = u.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: "/")
    }()

    static var model: String {
        ProcessInfo.processInfo.environment["SWITCHYARD_MODEL"]
            ?? root.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    }

    static var goldens: URL {
        root.deletingLastPathComponent().appendingPathComponent("shared/fixtures/llama-cpp-goldens.json")
    }
}
