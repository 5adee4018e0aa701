// GPT-2 byte-level BPE tokenizer, compatible with llama.cpp's LLAMA_VOCAB_TYPE_BPE tokenizer for the
// pre-tokenizers it supports (`smollm` and the others with the same regexes, see PreTokenizerKind).
//
// encode(text):
//   1. special tokens are cut out of the raw UTF-8 first (llama.cpp's tokenizer_st_partition): for each
//      special token, longest text first, every occurrence in every remaining text fragment becomes that
//      token. With parseSpecial off, CONTROL and UNKNOWN tokens are not matched, but USER_DEFINED tokens
//      still are (llama.cpp and HF tokenizers do the same; this vocabulary has none). Optional plain-text
//      byte ranges (chat message contents) behave as if parseSpecial were off inside them: a CONTROL /
//      UNKNOWN occurrence that overlaps one is not matched and stays part of its text fragment, so the
//      fragments are exactly llama.cpp's whenever no such occurrence touches a range;
//   2. each text fragment is pre-tokenized into words (UnicodePretokenizer.swift);
//   3. each word is BPE-merged starting from one symbol per byte: the adjacent pair with the lowest merge
//      rank (leftmost on ties) is merged until no pair has a rank. Symbols are integer ids (vocabulary
//      ids, plus "synthetic" ids above the vocabulary for merge operands/results that are not tokens),
//      and merges are looked up by integer pair, never by string.
//   4. a final symbol that is not a vocabulary token falls back as llama.cpp does: one token per byte
//      of its byte-level text that is itself a token (only printable ASCII can be). With SmolLM2 every
//      merge operand and result is a token, but 21 byte values have no token of their own (0x04, 0x06,
//      0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, 0xF5-0xFF): such bytes are dropped, as in
//      llama.cpp, so text containing them does not round-trip.
// decode(ids): each token's bytes (byte-level text mapped back through the byte map; CONTROL / UNKNOWN /
// USER_DEFINED tokens as their text), concatenated, then decoded as UTF-8 (U+FFFD for invalid bytes).

import Synchronization

public enum TokenizerError: Error, Equatable, CustomStringConvertible {
    case unsupportedModel(String)
    case unsupportedPreTokenizer(String)
    case emptyVocabulary
    case vocabularyTooLarge(Int)
    case tokenTypeCountMismatch(tokens: Int, types: Int)
    case tooManyMerges(Int)
    case specialTokenOutOfRange(name: String, id: Int32, vocabSize: Int)

    public var description: String {
        switch self {
        case .unsupportedModel(let m):
            return "tokenizer model '\(m)' is not supported (only GPT-2 byte-level BPE, tokenizer.ggml.model = gpt2)"
        case .unsupportedPreTokenizer(let p):
            return "pre-tokenizer '\(p)' is not supported (supported: \(PreTokenizerKind.supportedNames.joined(separator: ", ")))"
        case .emptyVocabulary: return "the vocabulary is empty"
        case .vocabularyTooLarge(let n): return "vocabulary of \(n) tokens is too large (limit \(Tokenizer.maxVocabulary))"
        case .tokenTypeCountMismatch(let t, let ty): return "\(ty) token types for \(t) tokens"
        case .tooManyMerges(let n): return "\(n) BPE merges is too many (limit \(Tokenizer.maxMerges))"
        case .specialTokenOutOfRange(let name, let id, let n): return "\(name) token id \(id) is outside the vocabulary of \(n)"
        }
    }
}

/// Pre-tokenizers with the GPT-2 regex (optionally after splitting every digit).
enum PreTokenizerKind: Sendable {
    case gpt2DigitsSplit   // "\p{N}" then the GPT-2 regex (smollm, starcoder, refact, command-r, codeshell, exaone, minerva)
    case gpt2              // the GPT-2 regex alone (gpt2, mpt, olmo, jais)

    static let digitNames = ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"]
    static let plainNames = ["gpt2", "mpt", "olmo", "jais"]
    static var supportedNames: [String] { digitNames + plainNames }

    init?(name: String) {
        if Self.digitNames.contains(name) { self = .gpt2DigitsSplit }
        else if Self.plainNames.contains(name) { self = .gpt2 }
        else { return nil }
    }
}

/// llama.cpp token types (tokenizer.ggml.token_type).
enum TokenKind: UInt8, Sendable {
    case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6

    init(gguf: Int32) { self = TokenKind(rawValue: UInt8(clamping: max(0, gguf))) ?? .undefined }
}

public final class Tokenizer: Sendable {
    /// Largest vocabulary accepted (symbol ids, synthetic ones included, must stay below 2^31).
    public static let maxVocabulary = 1 << 24
    /// Largest merge list accepted (each merge adds at most 3 synthetic symbols: ids stay < 2^31).
    public static let maxMerges = 1 << 26

    public let vocabSize: Int
    public let bosID: Int32?
    public let eosID: Int32?
    public let eotID: Int32?
    /// Whether encode(addSpecial: true) prepends BOS (tokenizer.ggml.add_bos_token).
    public let addBOS: Bool

    private let preTokenizer: PreTokenizerKind
    private let kinds: [TokenKind]
    /// Token text -> id (the last id wins for duplicate texts, as in llama.cpp's token_to_id).
    private let textToID: [String: Int32]
    /// Symbol id of each single byte (its byte-level character): a vocabulary id, or a synthetic id
    /// >= vocabSize when that character is not a token.
    private let byteSymbol: [Int32]
    private let merges: MergeTable
    /// Bytes of token i: pieceBytes[pieceStart[i] ..< pieceStart[i + 1]].
    private let pieceBytes: [UInt8]
    private let pieceStart: [Int]
    /// Special tokens matched in raw text, longest text first (ties: lower id first).
    private let specials: [(id: Int32, bytes: [UInt8], onlyWhenParsingSpecial: Bool)]
    /// firstByteOfSpecial[b]: some special token's text starts with byte b (fast rejection).
    private let firstByteOfSpecial: [Bool]
    private let endOfGeneration: Set<Int32>
    /// Words already merged (bytes -> ids); bounded, cleared when full.
    private let wordCache = Mutex<[WordKey: [Int32]]>([:])
    private static let wordCacheLimit = 1 << 16

    /// Token texts that end a generation in llama.cpp (llama-vocab.cpp: special_eog_ids by text).
    static let endOfGenerationTexts: Set<String> = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>",
    ]

    public convenience init(config: TokenizerConfig) throws {
        try self.init(tokens: config.tokens, tokenTypes: config.tokenTypes, merges: config.merges,
                      bosID: config.bosID, eosID: config.eosID, eotID: config.eotID, addBOS: config.addBOS,
                      preTokenizer: config.preTokenizer, model: config.model)
    }

    public init(tokens: [String], tokenTypes: [Int32], merges mergeList: [String], bosID: Int32?, eosID: Int32?,
                eotID: Int32?, addBOS: Bool, preTokenizer: String, model: String) throws {
        guard model == "gpt2" else { throw TokenizerError.unsupportedModel(model) }
        guard let pre = PreTokenizerKind(name: preTokenizer) else { throw TokenizerError.unsupportedPreTokenizer(preTokenizer) }
        guard !tokens.isEmpty else { throw TokenizerError.emptyVocabulary }
        guard tokens.count <= Self.maxVocabulary else { throw TokenizerError.vocabularyTooLarge(tokens.count) }
        guard mergeList.count <= Self.maxMerges else { throw TokenizerError.tooManyMerges(mergeList.count) }
        guard tokenTypes.count == tokens.count else {
            throw TokenizerError.tokenTypeCountMismatch(tokens: tokens.count, types: tokenTypes.count)
        }
        let n = tokens.count
        for (name, id) in [("BOS", bosID), ("EOS", eosID), ("EOT", eotID)] {
            if let id, id < 0 || Int(id) >= n { throw TokenizerError.specialTokenOutOfRange(name: name, id: id, vocabSize: n) }
        }
        vocabSize = n
        self.bosID = bosID; self.eosID = eosID; self.eotID = eotID; self.addBOS = addBOS
        self.preTokenizer = pre

        var textToID = [String: Int32](minimumCapacity: n)
        for (i, t) in tokens.enumerated() { textToID[t] = Int32(i) }
        self.textToID = textToID

        // End of generation: eos, eot, and the texts llama.cpp recognises, which it also forces to
        // CONTROL (so that they are neither BPE-produced nor matched with parseSpecial off).
        var kinds = tokenTypes.map(TokenKind.init(gguf:))
        var eog = Set<Int32>()
        for t in Self.endOfGenerationTexts { if let id = textToID[t] { eog.insert(id); kinds[Int(id)] = .control } }
        if let eosID { eog.insert(eosID) }
        if let eotID { eog.insert(eotID) }
        endOfGeneration = eog
        self.kinds = kinds

        // Symbols: vocabulary ids, then synthetic ids for byte characters / merge strings that are not tokens.
        var synthetic = [String: Int32]()
        func symbol(_ text: String) -> Int32 {
            if let id = textToID[text] { return id }
            if let id = synthetic[text] { return id }
            let id = Int32(n + synthetic.count)
            synthetic[text] = id
            return id
        }
        byteSymbol = (0..<256).map { b in symbol(ByteLevel.encode([UInt8(b)])) }

        // Merges "left right" in rank order. llama.cpp splits at the first space after the first byte;
        // a line without one merges nothing and is skipped.
        var table = MergeTable(expected: mergeList.count)
        for (rank, line) in mergeList.enumerated() {
            let u = Array(line.utf8)
            guard u.count >= 3, let sp = u[1...].firstIndex(of: 0x20) else { continue }
            let left = String(decoding: u[..<sp], as: UTF8.self)
            let right = String(decoding: u[(sp + 1)...], as: UTF8.self)
            guard !right.isEmpty else { continue }
            let l = symbol(left), r = symbol(right), m = symbol(left + right)
            table.insertIfAbsent(left: l, right: r, rank: Int32(clamping: rank), merged: m)
        }
        merges = table

        // Token bytes.
        var bytes = [UInt8](); bytes.reserveCapacity(n * 6)
        var starts = [Int](); starts.reserveCapacity(n + 1)
        for (i, t) in tokens.enumerated() {
            starts.append(bytes.count)
            Self.appendPiece(text: t, kind: kinds[i], to: &bytes)
        }
        starts.append(bytes.count)
        pieceBytes = bytes; pieceStart = starts

        // Special tokens: CONTROL / UNKNOWN (only with parseSpecial) and USER_DEFINED (always).
        var specials: [(id: Int32, bytes: [UInt8], onlyWhenParsingSpecial: Bool)] = []
        for (i, t) in tokens.enumerated() where !t.isEmpty {
            switch kinds[i] {
            case .control, .unknown: specials.append((Int32(i), Array(t.utf8), true))
            case .userDefined: specials.append((Int32(i), Array(t.utf8), false))
            default: break
            }
        }
        specials.sort { $0.bytes.count != $1.bytes.count ? $0.bytes.count > $1.bytes.count : $0.id < $1.id }
        self.specials = specials
        var first = [Bool](repeating: false, count: 256)
        for s in specials { first[Int(s.bytes[0])] = true }
        firstByteOfSpecial = first
    }

    /// Bytes a token stands for (llama.cpp's token_to_piece with special = true).
    private static func appendPiece(text: String, kind: TokenKind, to out: inout [UInt8]) {
        switch kind {
        case .control, .unknown, .userDefined:
            out.append(contentsOf: text.utf8)
        case .normal:
            for s in text.unicodeScalars {
                if let b = ByteLevel.byte(for: s.value) { out.append(b) }
                // A character outside the byte map (not in a GPT-2 byte-level vocabulary): kept as its
                // UTF-8 (llama.cpp prints an "[UNK_BYTE_0x..]" marker instead).
                else { out.append(contentsOf: String(s).utf8) }
            }
        case .byte:
            // "<0xAB>" style byte tokens.
            let u = Array(text.utf8)
            if u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E,
               let v = UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16) {
                out.append(v)
            } else {
                appendPiece(text: text, kind: .normal, to: &out)
            }
        case .unused, .undefined:
            break   // llama.cpp renders nothing for these
        }
    }

    // MARK: - Public queries

    /// Whether generation ends at this token (EOS, EOT, and llama.cpp's end-of-generation texts such
    /// as <|im_end|> and <|endoftext|>).
    public func isEndOfGeneration(_ id: Int32) -> Bool { endOfGeneration.contains(id) }

    /// Whether the token is a CONTROL / UNKNOWN / USER_DEFINED token (rendered as its text).
    public func isSpecial(_ id: Int32) -> Bool {
        guard id >= 0, Int(id) < vocabSize else { return false }
        switch kinds[Int(id)] { case .control, .unknown, .userDefined: return true; default: return false }
    }

    /// The id of the token whose text (as stored in the vocabulary) is `text`.
    public func tokenID(_ text: String) -> Int32? { textToID[text] }

    /// The bytes token `id` decodes to; empty for an id outside 0..<vocabSize.
    public func tokenBytes(_ id: Int32) -> [UInt8] {
        guard id >= 0, Int(id) < vocabSize else { return [] }
        return Array(pieceBytes[pieceStart[Int(id)] ..< pieceStart[Int(id) + 1]])
    }

    /// Appends the bytes of token `id` (nothing for an out-of-range id).
    public func appendTokenBytes(_ id: Int32, to out: inout [UInt8]) {
        guard id >= 0, Int(id) < vocabSize else { return }
        out.append(contentsOf: pieceBytes[pieceStart[Int(id)] ..< pieceStart[Int(id) + 1]])
    }

    /// Text of a token sequence. Ids outside 0..<vocabSize are skipped; bytes that do not form valid
    /// UTF-8 become U+FFFD.
    public func decode(_ ids: [Int32]) -> String {
        var bytes = [UInt8]()
        bytes.reserveCapacity(ids.count * 4)
        for id in ids { appendTokenBytes(id, to: &bytes) }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: - Encoding

    /// Token ids of `text`, as llama.cpp's llama_tokenize(text, add_special, parse_special).
    /// - parseSpecial: special-token texts (e.g. "<|im_start|>") in `text` become their ids; when off
    ///   they are tokenized as plain text (USER_DEFINED tokens are matched either way, as in llama.cpp).
    /// - addSpecial: prepend BOS when the model asks for it (addBOS).
    /// - plainTextRanges: byte ranges of `text.utf8` (e.g. the message contents of a rendered chat
    ///   template) in which special tokens are text, as with parseSpecial off: a CONTROL / UNKNOWN token
    ///   occurrence that overlaps a range is not matched and its bytes stay in the surrounding text
    ///   fragment, which is then pre-tokenized and merged like any other text. Occurrences wholly outside
    ///   the ranges are matched as usual, so when no range contains or straddles special-token text the
    ///   result equals `encode(text, parseSpecial:, addSpecial:)` exactly. Ranges may be unsorted,
    ///   overlapping or empty; parts outside the text are ignored.
    public func encode(_ text: String, parseSpecial: Bool = true, addSpecial: Bool = false,
                       plainTextRanges: [Range<Int>] = []) -> [Int32] {
        var out = [Int32]()
        if addSpecial, addBOS, let bosID { out.append(bosID) }
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty else { return out }
        out.reserveCapacity(out.count + bytes.count / 3 + 4)
        var work = Work()
        let plain = Self.normalized(plainTextRanges, count: bytes.count)
        bytes.withUnsafeBufferPointer { buf in
            for f in partition(buf, parseSpecial: parseSpecial, plain: plain) {
                switch f {
                case .token(let id): out.append(id)
                case .text(let lo, let hi): encodeFragment(UnsafeBufferPointer(rebasing: buf[lo..<hi]), &work, &out)
                }
            }
        }
        return out
    }

    private enum Fragment { case text(Int, Int), token(Int32) }

    /// llama.cpp's tokenizer_st_partition: special tokens in order (longest first); each one splits
    /// every text fragment left over by the earlier ones at all its non-overlapping occurrences, left
    /// to right. Computed in one scan: find every occurrence of every special token, then claim them
    /// in that order - an occurrence is taken when it overlaps neither a claimed one nor the previous
    /// occurrence taken for the same token, which is exactly what the fragment-by-fragment search finds.
    /// `plain`: sorted, disjoint, non-empty byte ranges where parseSpecial counts as off (occurrences of
    /// CONTROL / UNKNOWN tokens overlapping one are left out before the claiming).
    private func partition(_ buf: UnsafeBufferPointer<UInt8>, parseSpecial: Bool, plain: [Range<Int>]) -> [Fragment] {
        let n = buf.count
        var hits: [[Int]]? = nil          // hits[k]: start offsets of specials[k], ascending
        var r = 0                         // plain[r]: the first plain range that ends after i
        for i in 0..<n where firstByteOfSpecial[Int(buf[i])] {
            while r < plain.count && plain[r].upperBound <= i { r += 1 }
            for k in specials.indices {
                let s = specials[k]
                if s.bytes[0] != buf[i] || i + s.bytes.count > n { continue }
                if s.onlyWhenParsingSpecial {
                    if !parseSpecial { continue }
                    // [i, i + count) overlaps plain[r] (the only candidate: later ranges start later).
                    if r < plain.count && plain[r].lowerBound < i + s.bytes.count { continue }
                }
                if Self.matches(buf, i, s.bytes) {
                    if hits == nil { hits = Array(repeating: [], count: specials.count) }
                    hits?[k].append(i)
                }
            }
        }
        guard let hits else { return [.text(0, n)] }
        var claimed = [Bool](repeating: false, count: n)
        var taken: [(at: Int, end: Int, id: Int32)] = []
        for k in specials.indices where !hits[k].isEmpty {
            let m = specials[k].bytes.count
            var lastEnd = 0
            for p in hits[k] where p >= lastEnd {
                if claimed[p ..< p + m].contains(true) { continue }
                for j in p ..< p + m { claimed[j] = true }
                taken.append((p, p + m, specials[k].id))
                lastEnd = p + m
            }
        }
        taken.sort { $0.at < $1.at }
        var frags: [Fragment] = []
        frags.reserveCapacity(2 * taken.count + 1)
        var pos = 0
        for t in taken {
            if pos < t.at { frags.append(.text(pos, t.at)) }
            frags.append(.token(t.id))
            pos = t.end
        }
        if pos < n { frags.append(.text(pos, n)) }
        return frags
    }

    /// `ranges` clamped to 0..<count, empty ones dropped, sorted and merged where they overlap or touch.
    static func normalized(_ ranges: [Range<Int>], count: Int) -> [Range<Int>] {
        var rs = ranges.compactMap { r -> Range<Int>? in
            let lo = max(0, r.lowerBound), hi = min(count, r.upperBound)
            return lo < hi ? lo..<hi : nil
        }
        guard rs.count > 1 else { return rs }
        rs.sort { $0.lowerBound < $1.lowerBound }
        var out: [Range<Int>] = [rs[0]]
        for x in rs.dropFirst() {
            if x.lowerBound <= out[out.count - 1].upperBound {
                out[out.count - 1] = out[out.count - 1].lowerBound ..< max(out[out.count - 1].upperBound, x.upperBound)
            } else {
                out.append(x)
            }
        }
        return out
    }

    @inline(__always) private static func matches(_ buf: UnsafeBufferPointer<UInt8>, _ at: Int, _ pattern: [UInt8]) -> Bool {
        for j in 1..<pattern.count where buf[at + j] != pattern[j] { return false }
        return true
    }

    /// A word's bytes as a cache key, hashed in one call rather than byte by byte.
    private struct WordKey: Hashable, Sendable {
        let bytes: [UInt8]
        func hash(into h: inout Hasher) { bytes.withUnsafeBytes { h.combine(bytes: $0) } }
    }

    /// Scratch buffers reused across the words of one encode call.
    private struct Work {
        var scalars: [UInt32] = []
        var classes: [ScalarClass] = []
        var offsets: [Int] = []          // byte offset of each scalar, plus the end
        var words: [Range<Int>] = []
        let bpe = BPEScratch()
    }

    /// BPE state of one word, one slot per initial byte position i (raw memory, grown as needed):
    ///   sym[i]  symbol id starting at i (meaningful while len[i] > 0)
    ///   len[i]  byte length of that symbol; 0 once it has been merged into its left neighbour
    ///   prev[i], next[i]  neighbouring live symbols, -1 at the ends
    ///   heap    binary min-heap of candidate merges, rank << 32 | left position; a word of n bytes
    ///           pushes at most n - 1 initial pairs plus 2 per merge (at most n - 1 merges): < 3n.
    private final class BPEScratch {
        private(set) var capacity = 0
        private(set) var sym = UnsafeMutablePointer<Int32>.allocate(capacity: 0)
        private(set) var len = UnsafeMutablePointer<Int32>.allocate(capacity: 0)
        private(set) var prev = UnsafeMutablePointer<Int32>.allocate(capacity: 0)
        private(set) var next = UnsafeMutablePointer<Int32>.allocate(capacity: 0)
        private(set) var heap = UnsafeMutablePointer<UInt64>.allocate(capacity: 0)

        func reserve(_ n: Int) {
            guard n > capacity else { return }
            release()
            capacity = max(n, 2 * capacity, 64)
            sym = .allocate(capacity: capacity); len = .allocate(capacity: capacity)
            prev = .allocate(capacity: capacity); next = .allocate(capacity: capacity)
            heap = .allocate(capacity: 3 * capacity)
        }
        private func release() {
            sym.deallocate(); len.deallocate(); prev.deallocate(); next.deallocate(); heap.deallocate()
        }
        deinit { release() }
    }

    private func encodeFragment(_ text: UnsafeBufferPointer<UInt8>, _ w: inout Work, _ out: inout [Int32]) {
        // UTF-8 -> code points with their byte offsets. The text comes from a Swift String and is
        // valid; a malformed byte would become one U+FFFD code point of class .other.
        w.scalars.removeAll(keepingCapacity: true)
        w.classes.removeAll(keepingCapacity: true)
        w.offsets.removeAll(keepingCapacity: true)
        var i = 0
        let n = text.count
        while i < n {
            let b0 = UInt32(text[i])
            var v: UInt32 = 0xFFFD, len = 1
            if b0 < 0x80 { v = b0 }
            else if b0 >= 0xC0 && b0 < 0xE0 && i + 1 < n { v = (b0 & 0x1F) << 6 | UInt32(text[i + 1] & 0x3F); len = 2 }
            else if b0 >= 0xE0 && b0 < 0xF0 && i + 2 < n {
                v = (b0 & 0x0F) << 12 | UInt32(text[i + 1] & 0x3F) << 6 | UInt32(text[i + 2] & 0x3F); len = 3
            } else if b0 >= 0xF0 && b0 < 0xF8 && i + 3 < n {
                v = (b0 & 0x07) << 18 | UInt32(text[i + 1] & 0x3F) << 12 | UInt32(text[i + 2] & 0x3F) << 6
                    | UInt32(text[i + 3] & 0x3F); len = 4
            }
            w.scalars.append(v)
            w.classes.append(ScalarClass.of(v))
            w.offsets.append(i)
            i += len
        }
        w.offsets.append(n)
        w.words.removeAll(keepingCapacity: true)
        w.scalars.withUnsafeBufferPointer { sc in
            w.classes.withUnsafeBufferPointer { cl in
                switch preTokenizer {
                case .gpt2DigitsSplit: SmolLMPretokenizer.split(scalars: sc, classes: cl, into: &w.words)
                case .gpt2: SmolLMPretokenizer.splitGPT2(scalars: sc, classes: cl, into: &w.words)
                }
            }
        }
        for r in w.words {
            let word = UnsafeBufferPointer(rebasing: text[w.offsets[r.lowerBound] ..< w.offsets[r.upperBound]])
            encodeWord(word, &w, &out)
        }
    }

    private func encodeWord(_ word: UnsafeBufferPointer<UInt8>, _ w: inout Work, _ out: inout [Int32]) {
        if word.count == 1 {
            emit(symbol: byteSymbol[Int(word[0])], bytes: word, &out)
            return
        }
        // Short words merge faster than a cache lookup (hashing, locking, copying the key).
        if word.count <= 3 { bpe(word, &w, &out); return }
        let key = WordKey(bytes: Array(word))
        if let hit = wordCache.withLock({ $0[key] }) {
            out.append(contentsOf: hit)
            return
        }
        let before = out.count
        bpe(word, &w, &out)
        let result = Array(out[before...])
        wordCache.withLock { cache in
            if cache.count >= Self.wordCacheLimit { cache.removeAll(keepingCapacity: true) }
            cache[key] = result
        }
    }

    /// Appends a final symbol: its id when it is a token, else llama.cpp's byte fallback.
    @inline(__always) private func emit(symbol: Int32, bytes: UnsafeBufferPointer<UInt8>, _ out: inout [Int32]) {
        if Int(symbol) < vocabSize { out.append(symbol); return }
        // llama.cpp looks up each byte of the symbol's byte-level text as a one-byte token; only
        // printable ASCII bytes ('!'...'~') stand for themselves there, so only they can match.
        for b in bytes where b >= 0x21 && b <= 0x7E {
            let s = byteSymbol[Int(b)]
            if Int(s) < vocabSize { out.append(s) }
        }
    }

    /// Lowest-rank-first BPE over one word (llama.cpp's llm_tokenizer_bpe_session::tokenize loop).
    private func bpe(_ word: UnsafeBufferPointer<UInt8>, _ w: inout Work, _ out: inout [Int32]) {
        let n = word.count
        let b = w.bpe
        b.reserve(n)
        let sym = b.sym, len = b.len, prev = b.prev, next = b.next, heap = b.heap
        var heapCount = 0
        for i in 0..<n {
            sym[i] = byteSymbol[Int(word[i])]
            len[i] = 1
            prev[i] = Int32(i - 1)
            next[i] = i + 1 < n ? Int32(i + 1) : -1
        }
        for i in 0..<(n - 1) {
            if let m = merges.lookup(sym[i], sym[i + 1]) { Self.heapPush(heap, &heapCount, UInt64(UInt32(m.rank)) << 32 | UInt64(i)) }
        }
        // Invariant: every adjacent live pair (a, next[a]) that has a merge rank has an entry
        // rank << 32 | a in the heap. Entries can go stale (a was merged away, or a's or its right
        // neighbour's symbol changed); a popped entry is valid iff the pair now at a still has that
        // rank - ranks identify a merge uniquely, so that pair is exactly the one llama.cpp would merge
        // next (same rank, same position), and a stale duplicate can never validate later because
        // symbols only grow.
        while let top = Self.heapPop(heap, &heapCount) {
            let left = Int(top & 0xFFFF_FFFF), rank = Int32(truncatingIfNeeded: top >> 32)
            guard len[left] > 0 else { continue }
            let right = Int(next[left])
            guard right >= 0, let m = merges.lookup(sym[left], sym[right]), m.rank == rank else { continue }
            sym[left] = m.merged
            len[left] += len[right]
            len[right] = 0
            let after = next[right]
            next[left] = after
            if after >= 0 { prev[Int(after)] = Int32(left) }
            let before = Int(prev[left])
            if before >= 0, let mb = merges.lookup(sym[before], sym[left]) {
                Self.heapPush(heap, &heapCount, UInt64(UInt32(mb.rank)) << 32 | UInt64(before))
            }
            if after >= 0, let ma = merges.lookup(sym[left], sym[Int(after)]) {
                Self.heapPush(heap, &heapCount, UInt64(UInt32(ma.rank)) << 32 | UInt64(left))
            }
        }
        var i = 0
        while i >= 0 {
            let span = UnsafeBufferPointer(rebasing: word[i ..< i + Int(len[i])])
            emit(symbol: sym[i], bytes: span, &out)
            i = Int(next[i])
        }
    }

    // Binary min-heap on UInt64 keys in h[0 ..< count] (rank in the high half, so ties go to the
    // leftmost position). The caller guarantees room (see BPEScratch).
    @inline(__always) private static func heapPush(_ h: UnsafeMutablePointer<UInt64>, _ count: inout Int, _ x: UInt64) {
        var i = count
        count += 1
        while i > 0 {
            let p = (i - 1) >> 1
            if h[p] <= x { break }
            h[i] = h[p]; i = p
        }
        h[i] = x
    }

    @inline(__always) private static func heapPop(_ h: UnsafeMutablePointer<UInt64>, _ count: inout Int) -> UInt64? {
        guard count > 0 else { return nil }
        count -= 1
        let n = count
        let top = h[0]
        guard n > 0 else { return top }
        let last = h[n]
        var i = 0
        while true {
            var c = 2 * i + 1
            if c >= n { break }
            if c + 1 < n && h[c + 1] < h[c] { c += 1 }
            if h[c] >= last { break }
            h[i] = h[c]; i = c
        }
        h[i] = last
        return top
    }
}
