import ArgumentParser
import CSwitchyardKernels
import Engine
import Foundation

/// `switchyard-bench make-model`: a GGUF with the same metadata, tensor names, shapes and types as
/// another, but random weights (tests and machines that cannot download the model).
struct MakeModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "make-model",
                                                    abstract: "Write a random-weight GGUF shaped like another one.")
    @Option(help: "GGUF file to copy metadata and shapes from.") var like: String
    @Option(help: "Output path.") var out: String
    @Option(help: "Random seed.") var seed: UInt64 = 1

    func run() throws {
        guard FileManager.default.fileExists(atPath: like) else {
            throw ValidationError("\(like) not found: run tools/fetch-model")
        }
        let src = try GGUFFile(path: like)
        var w = GGUFWriter(alignment: src.alignment)
        for k in src.metadataKeys { if let v = src.metadata[k] { w.add(k, v) } }
        var rng = Xoshiro256StarStar(seed: seed)
        for t in src.tensors {
            let n = t.dims[0], rows = t.rowCount
            // Norm weights near 1, other weights small (about 1/sqrt(row length)) so activations stay sane.
            let isNorm = t.dims.count == 1
            let scale = isNorm ? 0.1 : Float(1.0 / Double(n).squareRoot())
            var row = [Float](repeating: 0, count: n)
            guard let rowBytes = t.type.rowBytes(n) else { throw ValidationError("tensor \(t.name): bad row") }
            var data = [UInt8](repeating: 0, count: rowBytes * rows)
            try data.withUnsafeMutableBytes { db in
                for r in 0..<rows {
                    for i in 0..<n {
                        let u = Float(rng.nextUnit()) * 2 - 1
                        row[i] = (isNorm ? 1 : 0) + u * scale * 1.7
                    }
                    let dst = db.baseAddress! + r * rowBytes
                    try row.withUnsafeBufferPointer { rp in
                        switch t.type {
                        case .f32: dst.copyMemory(from: rp.baseAddress!, byteCount: 4 * n)
                        case .f16: for i in 0..<n { dst.storeBytes(of: syk_fp32_to_fp16(rp[i]), toByteOffset: 2 * i, as: UInt16.self) }
                        case .q8_0: syk_quantize_row_q8_0_ref(rp.baseAddress!, dst, Int32(n))
                        case .q4_1: syk_quantize_row_q4_1_ref(rp.baseAddress!, dst, Int32(n))
                        default: throw ValidationError("tensor \(t.name): type \(t.type) is not supported by make-model")
                        }
                    }
                }
            }
            w.addTensor(t.name, type: t.type, dims: t.dims, data: data)
        }
        try w.write(to: out)
        print("make-model: wrote \(out) (\(src.tensors.count) tensors, seed \(seed))")
    }
}
