import Foundation
import Testing
import JSONSchema
@testable import Engine

/// Random schema programs and random walks over the bytes each state accepts: the grammar never leaves
/// generation without a way on (some byte is accepted until the answer is complete), and every completed
/// answer is a JSON object that validates against the program (checked on Foundation's parse of it).
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

    static func isBool(_ v: Any) -> Bool { String(describing: type(of: v)).contains("Boolean") }
    static func isNumber(_ v: Any) -> Bool { v is NSNumber && !isBool(v) }

    /// The same JSON value (compared through Foundation's serialization, keys sorted).
    static func sameJSON(_ a: Any, _ b: Any) -> Bool {
        guard isBool(a) == isBool(b) else { return false }
        let opts: JSONSerialization.WritingOptions = [.sortedKeys, .fragmentsAllowed]
        return (try? JSONSerialization.data(withJSONObject: a, options: opts)) == (try? JSONSerialization.data(withJSONObject: b, options: opts))
    }

    /// Whether a parsed value validates against node `node` of the program (JSON Schema's meaning of each
    /// node kind, independent of the grammar).
    /// `path`: the anyOf nodes tried for this same value (a cycle among them adds nothing).
    static func validates(_ v: Any, _ node: Int32, _ p: SchemaProgram, depth: Int = 0, path: Set<Int32> = []) -> Bool {
        guard depth < 300 else { return false }
        switch p.nodes[Int(node)] {
        case .any: return true
        case .object(let props, let required, let additional):
            guard let d = v as? [String: Any] else { return false }
            for (k, prop) in props.enumerated() where (required >> UInt64(k)) & 1 == 1 {
                if d[String(decoding: prop.name, as: UTF8.self)] == nil { return false }
            }
            for (key, value) in d {
                if let prop = props.first(where: { String(decoding: $0.name, as: UTF8.self) == key }) {
                    if !validates(value, prop.node, p, depth: depth + 1) { return false }
                } else if additional < 0 || !validates(value, additional, p, depth: depth + 1) {
                    return false
                }
            }
            return true
        case .array(let items, let lo, let hi):
            guard let a = v as? [Any], a.count >= Int(lo), UInt64(a.count) <= UInt64(hi) else { return false }
            return a.allSatisfy { validates($0, items, p, depth: depth + 1) }
        case .string(let lo, let hi):
            guard let s = v as? String else { return false }
            let n = s.unicodeScalars.count
            return n >= Int(lo) && UInt64(n) <= UInt64(hi)
        case .number: return isNumber(v)
        case .integer:
            guard isNumber(v), let x = (v as? NSNumber)?.doubleValue else { return false }
            return x.rounded() == x
        case .literals(let lits):
            return lits.contains { lit in
                guard let l = try? JSONSerialization.jsonObject(with: Data(lit), options: .fragmentsAllowed) else { return false }
                return sameJSON(v, l)
            }
        case .anyOf(let alts):
            guard !path.contains(node) else { return false }
            let inner = path.union([node])
            return Set(alts).contains { validates(v, $0, p, depth: depth + 1, path: inner) }
        }
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
                    if let obj {
                        #expect(Self.validates(obj, 0, program), "does not validate: \(String(decoding: text, as: UTF8.self).debugDescription) in \(nodes)")
                    }
                }
            }
        }
        #expect(programs >= 150, "only \(programs) random programs were valid")
        #expect(completed >= programs / 2, "only \(completed) of \(programs * 2) walks completed")
        print("schema property test: \(programs) programs, \(completed) completed walks")
    }
}
