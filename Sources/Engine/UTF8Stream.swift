// UTF-8 helpers for streaming detokenization: a byte-level token can end in the middle of a
// multi-byte character, so text is only released up to the last complete character.

enum UTF8Stream {
    /// Length of the prefix of `bytes` that can be decoded now: everything except a trailing
    /// sequence that is a valid but incomplete start of a character (at most 3 bytes), which a
    /// later byte may still complete.
    ///
    /// Sequences are segmented exactly like a maximal-subpart decoder (Unicode 3.9, "U+FFFD
    /// substitution of maximal subparts", which Swift's String(decoding:) follows), so that decoding
    /// the released prefix and the rest separately gives the same text as decoding them together.
    static func decodablePrefixLength(_ bytes: UnsafeBufferPointer<UInt8>) -> Int {
        let n = bytes.count
        var i = 0
        while i < n {
            let b = bytes[i]
            // Expected continuation count and the allowed range of the first continuation byte.
            let need: Int
            var lo: UInt8 = 0x80, hi: UInt8 = 0xBF
            switch b {
            case 0x00...0x7F: i += 1; continue
            case 0xC2...0xDF: need = 1
            case 0xE0: need = 2; lo = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: need = 2
            case 0xED: need = 2; hi = 0x9F             // no surrogates
            case 0xF0: need = 3; lo = 0x90
            case 0xF1...0xF3: need = 3
            case 0xF4: need = 3; hi = 0x8F             // nothing above U+10FFFF
            default: i += 1; continue                  // invalid lead byte: one U+FFFD, move on
            }
            var j = 1
            while j <= need {
                if i + j >= n { return i }             // valid so far but cut off: hold from i
                let c = bytes[i + j]
                let ok = j == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF)
                if !ok { break }                       // maximal subpart i..<i+j is one U+FFFD
                j += 1
            }
            i += j > need ? need + 1 : j
        }
        return n
    }
}
