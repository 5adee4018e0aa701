import Foundation
import Testing
@testable import Engine

/// A small file using every metadata value type (nested arrays too) and a few tensors.
func sampleWriter() -> GGUFWriter {
    var w = GGUFWriter()
    w.add("general.architecture", .string("llama"))
    w.add("u8", .uint8(200)); w.add("i8", .int8(-5)); w.add("u16", .uint16(60000)); w.add("i16", .int16(-300))
    w.add("u32", .uint32(4_000_000_000)); w.add("i32", .int32(-7)); w.add("u64", .uint64(1 << 40))
    w.add("i64", .int64(-(1 << 40))); w.add("f32", .float32(1.5)); w.add("f64", .float64(-2.25))
    w.add("b", .bool(true)); w.add("s", .string("héllo ✓"))
    w.add("strs", .array(elementType: .string, [.string("a"), .string(""), .string("ü")]))
    w.add("ints", .array(elementType: .int32, [.int32(1), .int32(-2), .int32(3)]))
    w.add("floats", .array(elementType: .float32, [.float32(0.5), .float32(-1)]))
    w.add("nested", .array(elementType: .array, [
        .array(elementType: .uint8, [.uint8(1), .uint8(2)]),
        .array(elementType: .string, [.string("x")]),
        .array(elementType: .bool, []),
    ]))
    w.addTensor("a", type: .f32, dims: [4, 2], data: (0..<32).map { UInt8($0) })
    w.addTensor("b", type: .q8_0, dims: [32, 3], data: (0..<(34 * 3)).map { UInt8($0 & 0xff) })
    w.addTensor("c", type: .q4_1, dims: [64], data: (0..<40).map { UInt8(255 - $0) })
    return w
}

@Suite struct GGUFReaderTests {
    @Test func roundTripsEveryValueType() throws {
        let w = sampleWriter()
        let f = try GGUFFile(bytes: w.serialize())
        #expect(f.version == 3)
        #expect(f.metadataKeys == w.metadata.map(\.key))
        for (k, v) in w.metadata { #expect(f.metadata[k] == v, "key \(k)") }
        #expect(f.int("u32") == 4_000_000_000)
        #expect(f.int("i8") == -5)
        #expect(f.float("f32") == 1.5)
        #expect(f.float("i16") == -300)
        #expect(f.bool("b") == true)
        #expect(f.string("s") == "héllo ✓")
        #expect(f.stringArray("strs") == ["a", "", "ü"])
        #expect(f.intArray("ints") == [1, -2, 3])
        #expect(f.floatArray("floats") == [0.5, -1])
        #expect(f.string("u8") == nil)
        #expect(f.alignment == 32)
        #expect(f.tensors.map(\.name) == ["a", "b", "c"])
        let b = try #require(f.tensor(named: "b"))
        #expect(b.type == .q8_0 && b.dims == [32, 3] && b.byteSize == 102 && b.rowCount == 3)
        #expect(Array(f.data(for: b)) == w.tensors[1].data)
        #expect(Array(f.data(for: try #require(f.tensor(named: "c")))) == w.tensors[2].data)
        #expect(f.dataOffset % 32 == 0)
    }

    @Test func honoursGeneralAlignment() throws {
        var w = sampleWriter()
        w.alignment = 64
        w.add("general.alignment", .uint32(64))
        let f = try GGUFFile(bytes: w.serialize())
        #expect(f.alignment == 64)
        #expect(f.dataOffset % 64 == 0)
        for (i, t) in f.tensors.enumerated() {
            #expect(t.offset % 64 == 0)
            #expect(Array(f.data(for: t)) == w.tensors[i].data)
        }
    }

    @Test func readsFromDiskViaMmap() throws {
        let path = TestPaths.tempFile("x.gguf")
        defer { unlink(path) }
        try sampleWriter().write(to: path)
        let f = try GGUFFile(path: path)
        #expect(f.tensors.count == 3)
        #expect(throws: GGUFError.self) { try GGUFFile(path: path + ".does-not-exist") }
    }

    @Test func tokenizerConfigFromMetadata() throws {
        var w = GGUFWriter()
        w.add("tokenizer.ggml.model", .string("gpt2"))
        w.add("tokenizer.ggml.pre", .string("smollm"))
        w.add("tokenizer.ggml.tokens", .array(elementType: .string, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab"].map { .string($0) }))
        w.add("tokenizer.ggml.token_type", .array(elementType: .int32, [3, 3, 3, 1, 1, 1].map { .int32($0) }))
        w.add("tokenizer.ggml.merges", .array(elementType: .string, [.string("a b")]))
        w.add("tokenizer.ggml.bos_token_id", .uint32(1))
        w.add("tokenizer.ggml.eos_token_id", .uint32(2))
        w.add("tokenizer.ggml.padding_token_id", .uint32(0))
        w.add("tokenizer.chat_template", .string("{% for m in messages %}{% endfor %}"))
        let c = try TokenizerConfig(gguf: GGUFFile(bytes: w.serialize()))
        #expect(c.tokens.count == 6 && c.tokenTypes == [3, 3, 3, 1, 1, 1] && c.merges == ["a b"])
        #expect(c.bosID == 1 && c.eosID == 2 && c.eotID == 2 && c.paddingID == 0)
        #expect(c.addBOS == false && c.preTokenizer == "smollm" && c.model == "gpt2")
        #expect(c.chatTemplate?.hasPrefix("{%") == true)

        var bad = w
        bad.add("tokenizer.ggml.eot_token_id", .uint32(99))
        #expect(throws: GGUFError.self) { try TokenizerConfig(gguf: GGUFFile(bytes: bad.serialize())) }
    }

    @Test func realModelHeader() throws {
        let f = try GGUFFile(path: TestPaths.model())
        #expect(f.string("general.architecture") == "llama")
        #expect(f.int("llama.block_count") == 30)
        #expect(f.tensor(named: "token_embd.weight")?.type == .q8_0)
        #expect(f.tensor(named: "blk.0.attn_q.weight")?.type == .q4_1)
        #expect(f.tensor(named: "output.weight") == nil)
        let c = try TokenizerConfig(gguf: f)
        #expect(c.tokens.count == 49152)
        #expect(c.merges.count > 40000)
        #expect(c.eotID.map { c.tokens[Int($0)] } == "<|im_end|>")
        #expect(c.preTokenizer == "smollm")
    }
}

/// Corrupt-file suite: every damaged image must throw a GGUFError (never crash or read out of bounds).
@Suite struct GGUFCorruptionTests {
    func expectError(_ bytes: [UInt8], _ note: String) {
        do {
            _ = try GGUFFile(bytes: bytes)
            Issue.record("accepted a corrupt file: \(note)")
        } catch is GGUFError {
        } catch {
            Issue.record("wrong error type for \(note): \(error)")
        }
    }

    @Test func truncatedAtEveryOffset() {
        let (bytes, layout) = sampleWriter().serializeWithLayout()
        // Every prefix shorter than the end of the last tensor is invalid (header, kv, tensor infos, data).
        let lastEnd = layout.total - 24   // tensor c (40 bytes) ends 24 bytes of padding before the end
        for n in 0..<lastEnd { expectError(Array(bytes[0..<n]), "truncated to \(n) bytes") }
    }

    @Test func badMagicAndVersion() {
        var b = sampleWriter().serialize()
        b[0] = UInt8(ascii: "X")
        #expect(throws: GGUFError.badMagic(0x4655_4758)) { try GGUFFile(bytes: b) }
        var v = sampleWriter().serialize()
        v[4] = 2
        #expect(throws: GGUFError.unsupportedVersion(2)) { try GGUFFile(bytes: v) }
    }

    func patchU64(_ b: inout [UInt8], at o: Int, _ v: UInt64) {
        for i in 0..<8 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }

    @Test func absurdCounts() {
        var b = sampleWriter().serialize()
        patchU64(&b, at: 8, UInt64.max)         // tensor count
        expectError(b, "tensor count")
        b = sampleWriter().serialize()
        patchU64(&b, at: 16, 1 << 40)            // kv count
        expectError(b, "kv count")
        b = sampleWriter().serialize()
        patchU64(&b, at: 16, 1000)               // plausible but more than present
        expectError(b, "kv count 1000")
    }

    @Test func absurdStringAndArrayLengths() {
        let (b0, layout) = sampleWriter().serializeWithLayout()
        var b = b0
        patchU64(&b, at: layout.kvStart, UInt64.max)   // first key's length
        expectError(b, "key length")
        b = b0
        patchU64(&b, at: layout.kvStart, 1 << 30)
        expectError(b, "key length 1 GiB")
        // Find the "strs" array header and give it a huge count.
        let key = Array("strs".utf8)
        if let i = (0..<(b0.count - key.count)).first(where: { Array(b0[$0..<($0 + key.count)]) == key }) {
            b = b0
            patchU64(&b, at: i + key.count + 4 + 4, 1 << 27)   // after key, value type u32, element type u32
            expectError(b, "array count")
        } else {
            Issue.record("strs key not found")
        }
    }

    @Test func unknownTypesAndBadDims() {
        let (b0, layout) = sampleWriter().serializeWithLayout()
        // First tensor "a": name (8 + 1), n_dims u32, dims 2 x u64, type u32, offset u64.
        let t = layout.tensorInfoStart
        var b = b0
        b[t + 9] = 9                              // n_dims = 9
        expectError(b, "n_dims 9")
        b = b0
        patchU64(&b, at: t + 13, 0)               // dim 0 = 0
        expectError(b, "zero dim")
        b = b0
        patchU64(&b, at: t + 13, UInt64.max)      // dim 0 huge
        expectError(b, "huge dim")
        b = b0
        b[t + 29] = 77                            // type = 77
        expectError(b, "unknown tensor type")
        b = b0
        patchU64(&b, at: t + 33, 1 << 40)         // offset past end
        expectError(b, "offset past end")
        b = b0
        patchU64(&b, at: t + 33, 8)               // misaligned offset
        expectError(b, "misaligned offset")
        b = b0
        patchU64(&b, at: t + 33, 128)             // overlaps tensor b
        expectError(b, "overlap")
        // Row not a multiple of the block size: Q8_0 with 33-element rows.
        var w = GGUFWriter()
        w.addTensor("q", type: .q8_0, dims: [33], data: [UInt8](repeating: 0, count: 34))
        expectError(w.serialize(), "row not block multiple")
        // Unknown metadata value type.
        b = b0
        let keyLen = 8 + "general.architecture".utf8.count
        b[layout.kvStart + keyLen] = 42
        expectError(b, "unknown value type")
    }

    @Test func badAlignmentNestingDuplicatesAndValues() {
        var w = sampleWriter()
        w.add("general.alignment", .uint32(3))
        expectError(w.serialize(), "alignment 3")
        var deep: GGUFValue = .array(elementType: .uint8, [.uint8(1)])
        for _ in 0..<12 { deep = .array(elementType: .array, [deep]) }
        var d = GGUFWriter()
        d.add("deep", deep)
        expectError(d.serialize(), "deep nesting")
        var dup = GGUFWriter()
        dup.add("k", .bool(true)); dup.add("k", .bool(false))
        expectError(dup.serialize(), "duplicate key")
        var inv = GGUFWriter()
        inv.add("k", .bool(true))
        var (b, l) = inv.serializeWithLayout()
        b[l.tensorInfoStart - 1] = 7               // bool byte 7 (last byte of the kv section)
        expectError(b, "bool 7")
        var utf = GGUFWriter()
        utf.add("k", .string("ab"))
        (b, l) = utf.serializeWithLayout()
        b[l.tensorInfoStart - 1] = 0xff
        expectError(b, "invalid UTF-8")
    }

    @Test func randomByteFlipsNeverCrash() {
        let b0 = sampleWriter().serialize()
        var rng = TestRNG(seed: 7)
        for _ in 0..<2000 {
            var b = b0
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            _ = try? GGUFFile(bytes: b)   // may parse (flip in tensor data) or throw; must not crash
        }
    }
}
