import ArgumentParser
import CSwitchyardKernels
import Engine
import Foundation

/// `switchyard-bench make-model`: a GGUF with the same metadata, tensor names, shapes and types as
/// another, but random weights (tests and machines that cannot download the model).
struct MakeModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "make-model",
                                                    abstract: "Write a random-weight GGUF shaped like another one (or like a preset).")
    @Option(help: "GGUF file to copy metadata and shapes from.") var like: String?
    @Option(help: "Shapes without a model file: 'smollm2-135m' (SmolLM2-135M Q4_1: 30 layers, Q8_0 embedding, tied output, a small byte-level tokenizer).")
    var preset: String?
    @Option(help: "Output path.") var out: String
    @Option(help: "Random seed.") var seed: UInt64 = 1

    struct TensorShape { var name: String; var type: GGMLType; var dims: [Int]; var rowCount: Int { dims.dropFirst().reduce(1, *) } }

    func run() throws {
        var w: GGUFWriter
        let shapes: [TensorShape]
        switch (like, preset) {
        case (let like?, nil):
            guard FileManager.default.fileExists(atPath: like) else {
                throw ValidationError("\(like) not found: run tools/fetch-model")
            }
            let src = try GGUFFile(path: like)
            w = GGUFWriter(alignment: src.alignment)
            for k in src.metadataKeys { if let v = src.metadata[k] { w.add(k, v) } }
            shapes = src.tensors.map { TensorShape(name: $0.name, type: $0.type, dims: $0.dims) }
        case (nil, "smollm2-135m"?):
            (w, shapes) = Self.smolLM2Preset()
        default:
            throw ValidationError("give exactly one of --like PATH or --preset smollm2-135m")
        }
        var rng = Xoshiro256StarStar(seed: seed)
        for t in shapes {
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
        print("make-model: wrote \(out) (\(shapes.count) tensors, seed \(seed))")
    }

    /// SmolLM2-135M-Instruct Q4_1's metadata and tensor shapes/types, with a small valid gpt2 tokenizer:
    /// the specials, the 256 byte tokens and a few merges; the rest of the 49152 ids are unused fillers.
    static func smolLM2Preset() -> (GGUFWriter, [TensorShape]) {
        let dim = 576, ff = 1536, nLayer = 30, nHead = 9, nKV = 3, vocab = 49152, hd = dim / nHead
        var w = GGUFWriter()
        w.add("general.architecture", .string("llama"))
        w.add("general.name", .string("synthetic smollm2-135m (random weights)"))
        w.add("llama.block_count", .uint32(UInt32(nLayer)))
        w.add("llama.context_length", .uint32(8192))
        w.add("llama.embedding_length", .uint32(UInt32(dim)))
        w.add("llama.feed_forward_length", .uint32(UInt32(ff)))
        w.add("llama.attention.head_count", .uint32(UInt32(nHead)))
        w.add("llama.attention.head_count_kv", .uint32(UInt32(nKV)))
        w.add("llama.rope.freq_base", .float32(100000))
        w.add("llama.attention.layer_norm_rms_epsilon", .float32(1e-5))
        w.add("general.file_type", .uint32(3))
        w.add("llama.vocab_size", .uint32(UInt32(vocab)))
        w.add("llama.rope.dimension_count", .uint32(UInt32(hd)))
        // gpt2 byte-level vocabulary: bytes map to printable code points (GPT-2's bytes_to_unicode).
        var byteChars: [String] = []
        var extra = 0
        for b in 0..<256 {
            let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
            let scalar = printable ? b : 256 + extra
            if !printable { extra += 1 }
            byteChars.append(String(Character(Unicode.Scalar(UInt32(scalar))!)))
        }
        let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        let merges = ["Ġ t", "Ġ a", "i n", "h e", "Ġ Ġ", "r e", "o n", "e r"]
        var tokens = specials + byteChars + merges.map { $0.replacingOccurrences(of: " ", with: "") }
        var types = [Int32](repeating: 3, count: specials.count) + [Int32](repeating: 1, count: tokens.count - specials.count)
        while tokens.count < vocab { tokens.append("<|unused_\(tokens.count)|>"); types.append(4) }
        w.add("tokenizer.ggml.model", .string("gpt2"))
        w.add("tokenizer.ggml.pre", .string("smollm"))
        w.add("tokenizer.ggml.add_bos_token", .bool(false))
        w.add("tokenizer.ggml.tokens", .array(elementType: .string, tokens.map { .string($0) }))
        w.add("tokenizer.ggml.token_type", .array(elementType: .int32, types.map { .int32($0) }))
        w.add("tokenizer.ggml.merges", .array(elementType: .string, merges.map { .string($0) }))
        w.add("tokenizer.ggml.bos_token_id", .uint32(1))
        w.add("tokenizer.ggml.eos_token_id", .uint32(2))
        w.add("tokenizer.ggml.unknown_token_id", .uint32(0))
        w.add("tokenizer.ggml.padding_token_id", .uint32(2))
        w.add("tokenizer.chat_template", .string("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"))
        var shapes = [TensorShape(name: "token_embd.weight", type: .q8_0, dims: [dim, vocab])]
        for l in 0..<nLayer {
            let p = "blk.\(l)."
            shapes += [TensorShape(name: p + "attn_norm.weight", type: .f32, dims: [dim]),
                       TensorShape(name: p + "ffn_down.weight", type: .q4_1, dims: [ff, dim]),
                       TensorShape(name: p + "ffn_gate.weight", type: .q4_1, dims: [dim, ff]),
                       TensorShape(name: p + "ffn_up.weight", type: .q4_1, dims: [dim, ff]),
                       TensorShape(name: p + "ffn_norm.weight", type: .f32, dims: [dim]),
                       TensorShape(name: p + "attn_k.weight", type: .q4_1, dims: [dim, nKV * hd]),
                       TensorShape(name: p + "attn_output.weight", type: .q4_1, dims: [dim, dim]),
                       TensorShape(name: p + "attn_q.weight", type: .q4_1, dims: [dim, dim]),
                       TensorShape(name: p + "attn_v.weight", type: .q4_1, dims: [dim, nKV * hd])]
        }
        shapes.append(TensorShape(name: "output_norm.weight", type: .f32, dims: [dim]))
        return (w, shapes)
    }
}
