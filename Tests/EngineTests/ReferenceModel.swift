import Foundation
@testable import Engine

/// Plain float Llama forward (llama2.c style): weights dequantized to float, no activation quantization,
/// float KV cache, exact softmax. The oracle for the engine's forward pass.
final class ReferenceLlama {
    let c: ModelConfig
    let gguf: GGUFFile
    var weights: [String: [Float]] = [:]
    var kcache: [[Float]]   // [layer][pos * kvDim]
    var vcache: [[Float]]
    var length = 0

    init(gguf: GGUFFile) throws {
        self.gguf = gguf
        c = try ModelConfig(gguf: gguf)
        kcache = Array(repeating: [], count: c.nLayer)
        vcache = Array(repeating: [], count: c.nLayer)
    }

    func w(_ name: String) -> [Float] {
        if let v = weights[name] { return v }
        guard let t = gguf.tensor(named: name) else { return [] }
        var out = [Float](repeating: 0, count: t.elementCount)
        out.withUnsafeMutableBufferPointer { b in
            for r in 0..<t.rowCount { Model.rowToFloat(gguf: gguf, t, row: r, into: b.baseAddress! + r * t.dims[0]) }
        }
        weights[name] = out
        return out
    }

    func matvec(_ W: [Float], _ x: [Float], rows: Int) -> [Float] {
        let k = x.count
        var out = [Float](repeating: 0, count: rows)
        for r in 0..<rows {
            var s: Float = 0
            for i in 0..<k { s += W[r * k + i] * x[i] }
            out[r] = s
        }
        return out
    }

    func rmsnorm(_ x: [Float], _ g: [Float]) -> [Float] {
        var ss: Double = 0
        for v in x { ss += Double(v * v) }
        let scale = 1 / sqrtf(Float(ss / Double(x.count)) + c.rmsEps)
        return (0..<x.count).map { x[$0] * scale * g[$0] }
    }

    func rope(_ v: inout [Float], heads: Int, pos: Int) {
        let hd = c.headDim
        for h in 0..<heads {
            for i in 0..<(hd / 2) {
                let theta = Float(Double(pos) * pow(Double(c.ropeBase), -2.0 * Double(i) / Double(hd)))
                let a = v[h * hd + 2 * i], b = v[h * hd + 2 * i + 1]
                v[h * hd + 2 * i] = a * cos(theta) - b * sin(theta)
                v[h * hd + 2 * i + 1] = a * sin(theta) + b * cos(theta)
            }
        }
    }

    /// Appends one token and returns its logits.
    func step(_ token: Int32) -> [Float] {
        let dim = c.dim, hd = c.headDim, kvDim = c.kvDim
        let emb = w("token_embd.weight")
        var x = Array(emb[(Int(token) * dim)..<(Int(token) * dim + dim)])
        let pos = length
        for l in 0..<c.nLayer {
            let p = "blk.\(l)."
            let xb = rmsnorm(x, w(p + "attn_norm.weight"))
            var q = matvec(w(p + "attn_q.weight"), xb, rows: dim)
            var k = matvec(w(p + "attn_k.weight"), xb, rows: kvDim)
            let v = matvec(w(p + "attn_v.weight"), xb, rows: kvDim)
            rope(&q, heads: c.nHead, pos: pos)
            rope(&k, heads: c.nKVHead, pos: pos)
            kcache[l] += k
            vcache[l] += v
            var att = [Float](repeating: 0, count: dim)
            let group = c.nHead / c.nKVHead
            for h in 0..<c.nHead {
                let kvh = h / group
                var scores = [Float](repeating: 0, count: pos + 1)
                for j in 0...pos {
                    var s: Float = 0
                    for i in 0..<hd { s += q[h * hd + i] * kcache[l][j * kvDim + kvh * hd + i] }
                    scores[j] = s / sqrtf(Float(hd))
                }
                let m = scores.max()!
                var sum: Float = 0
                for j in 0...pos { scores[j] = expf(scores[j] - m); sum += scores[j] }
                for j in 0...pos {
                    for i in 0..<hd { att[h * hd + i] += scores[j] / sum * vcache[l][j * kvDim + kvh * hd + i] }
                }
            }
            let o = matvec(w(p + "attn_output.weight"), att, rows: dim)
            for i in 0..<dim { x[i] += o[i] }
            let xb2 = rmsnorm(x, w(p + "ffn_norm.weight"))
            let g = matvec(w(p + "ffn_gate.weight"), xb2, rows: c.ffnDim)
            let u = matvec(w(p + "ffn_up.weight"), xb2, rows: c.ffnDim)
            let hbuf = (0..<c.ffnDim).map { g[$0] / (1 + expf(-g[$0])) * u[$0] }
            let d = matvec(w(p + "ffn_down.weight"), hbuf, rows: dim)
            for i in 0..<dim { x[i] += d[i] }
        }
        length += 1
        let xf = rmsnorm(x, w("output_norm.weight"))
        let head = gguf.tensor(named: "output.weight") != nil ? w("output.weight") : emb
        return matvec(head, xf, rows: c.vocabSize)
    }
}
