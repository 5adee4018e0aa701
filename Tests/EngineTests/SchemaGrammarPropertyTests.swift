import Foundation
import Testing
import JSONSchema
@testable import Engine

/// Random schema programs and random walks over the bytes each state accepts: the grammar never leaves
/// generation without a way on (some byte is accepted until the answer is complete), and every completed
/// answer is a JSON object whose values have the node kinds' types.
@Suite("JSON schema grammar, random programs")
struct SchemaGrammarPropertyTests {
    typealias N = SchemaProgram.Node

    /// A random node table: an object root and up to `size` more nodes of every kind, referring anywhere
    /// (recursion and anyOf cycles included). Tables SchemaProgram refuses are skipped by the caller.
    static func randomNodes(_ rng: inout TestRNG, size: Int) -> [N] {
        func idx() -> Int32 { Int32(rng.next() % UInt64(size)) }
        func small(_ n: UInt64) -> UInt32 { UInt32(rng.next() % n) }
        var nodes: [N] = []
        for i in 0..<size {
            let kind = i == 0 ? 1 : rng.next() % 9
            switch kind {
            case 0: nodes.append(.any)
            case 1:
                let n = Int(rng.next() % 4)
                let names = ["a", "b", "ab", "k\u{e9}", "long_name"].shuffled(using: &rng).prefix(n)
                let props = names.map { SchemaProgram.Property(name: Array($0.utf8), node: idx()) }
                let required = rng.next() % UInt64(1 << props.count)
                let additional: Int32 = rng.next() % 3 == 0 ? idx() : -1
                nodes.append(.object(properties: Array(props), required: required, additional: additional))
            case 2:
                let lo = small(3)
                nodes.append(.array(items: idx(), minItems: lo, maxItems: rng.next() % 2 == 0 ? lo + small(3) : SchemaProgram.unbounded))
            case 3:
                let lo = small(3)
                nodes.append(.string(minLength: lo, maxLength: rng.next() % 2 == 0 ? lo + small(4) : SchemaProgram.unbounded))
            case 4: nodes.append(.number)
            case 5: nodes.append(.integer)
            case 6:
                let pool = ["1", "12", "-0.5", "\"x\"", "\"xy\"", "true", "null", "{\"k\":[1]}", "[]"]
                let lits = pool.shuffled(using: &rng).prefix(1 + Int(rng.next() % 4)).map { Array($0.utf8) }
                nodes.append(.literals(Array(lits)))
            default:
                nodes.append(.anyOf((0..<(1 + rng.next() % 3)).map { _ in idx() }))
            }
        }
        return nodes
    }

    @Test(arguments: [2026, 7, 99] as [UInt64])
    func randomWalksNeverDeadEndAndCompleteAsJSON(seed: UInt64) throws {
        var rng = TestRNG(seed: seed)
        var programs = 0, completed = 0
        for _ in 0..<1200 where programs < 300 {
            let nodes = Self.randomNodes(&rng, size: 2 + Int(rng.next() % 10))
            guard let program = try? SchemaProgram(nodes: nodes) else { continue }
            programs += 1
            let compiled = SchemaGrammar.Compiled(program)
            for _ in 0..<2 {
                var g = SchemaGrammar(compiled)
                var text: [UInt8] = []
                for _ in 0..<400 {
                    if g.isComplete { break }
                    // Every byte this state accepts, each tried on a copy.
                    var accepted: [UInt8] = []
                    for b in 0...255 {
                        var probe = g
                        if probe.step(UInt8(b)) { accepted.append(UInt8(b)) }
                    }
                    if accepted.isEmpty {
                        Issue.record("dead end after \(String(decoding: text, as: UTF8.self).debugDescription) in \(nodes)")
                        break
                    }
                    // Lean towards closing: structural bytes first, whitespace and string bytes rarely.
                    let closers = accepted.filter { [0x7D, 0x5D, 0x22, 0x2C, 0x3A, 0x30, 0x31, 0x74, 0x6E].contains($0) }
                    let pick = !closers.isEmpty && rng.next() % 4 != 0 ? closers : accepted
                    let b = pick[Int(rng.next() % UInt64(pick.count))]
                    let ok = g.step(b)
                    #expect(ok)
                    text.append(b)
                }
                if g.isComplete {
                    completed += 1
                    // JSON numbers have no range limit, Foundation's parser does: exponents past three digits
                    // are shortened for it (the text's structure stays as it is).
                    let bounded = String(decoding: text, as: UTF8.self)
                        .replacingOccurrences(of: #"([eE][+-]?)[0-9]{3,}"#, with: "$10", options: .regularExpression)
                    let obj = try? JSONSerialization.jsonObject(with: Data(bounded.utf8))
                    #expect(obj is [String: Any], "not a JSON object: \(String(decoding: text, as: UTF8.self).debugDescription) in \(nodes)")
                }
            }
        }
        #expect(programs >= 150, "only \(programs) random programs were valid")
        #expect(completed >= programs / 2, "only \(completed) of \(programs * 2) walks completed")
        print("schema property test: \(programs) programs, \(completed) completed walks")
    }
}
