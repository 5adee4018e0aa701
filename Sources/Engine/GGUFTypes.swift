// GGUF value and tensor types (GGUF v3, as written by llama.cpp's gguf-py).

/// A ggml tensor element type. Raw values are ggml's `enum ggml_type`.
public enum GGMLType: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q5_0 = 6
    case q5_1 = 7
    case q8_0 = 8
    case q8_1 = 9
    case q2_K = 10
    case q3_K = 11
    case q4_K = 12
    case q5_K = 13
    case q6_K = 14
    case q8_K = 15
    case i8 = 24
    case i16 = 25
    case i32 = 26
    case i64 = 27
    case f64 = 28
    case bf16 = 30

    /// Elements per block: a row's element count (dims[0]) must be a multiple of this.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .i8, .i16, .i32, .i64, .f64: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1: return 32
        case .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .q8_K: return 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8: return 1
        case .i64, .f64: return 8
        case .q4_0: return 18   // f16 d, 16 bytes of nibbles
        case .q4_1: return 20   // f16 d, f16 m, 16 bytes of nibbles
        case .q5_0: return 22
        case .q5_1: return 24
        case .q8_0: return 34   // f16 d, 32 x int8
        case .q8_1: return 36
        case .q2_K: return 84
        case .q3_K: return 110
        case .q4_K: return 144
        case .q5_K: return 176
        case .q6_K: return 210
        case .q8_K: return 292
        }
    }

    /// Types the engine can compute with (dequantize / dot product).
    public var isSupportedForCompute: Bool {
        switch self {
        case .f32, .f16, .bf16, .q4_0, .q4_1, .q8_0: return true
        default: return false
        }
    }

    public var description: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q5_0: return "Q5_0"
        case .q5_1: return "Q5_1"
        case .q8_0: return "Q8_0"
        case .q8_1: return "Q8_1"
        case .q2_K: return "Q2_K"
        case .q3_K: return "Q3_K"
        case .q4_K: return "Q4_K"
        case .q5_K: return "Q5_K"
        case .q6_K: return "Q6_K"
        case .q8_K: return "Q8_K"
        case .i8: return "I8"
        case .i16: return "I16"
        case .i32: return "I32"
        case .i64: return "I64"
        case .f64: return "F64"
        case .bf16: return "BF16"
        }
    }

    /// Bytes of one row of `n` elements, or nil when `n` is not a whole number of blocks or overflows.
    public func rowBytes(_ n: Int) -> Int? {
        guard n >= 0, n % blockSize == 0 else { return nil }
        let (b, o) = (n / blockSize).multipliedReportingOverflow(by: blockBytes)
        return o ? nil : b
    }
}

/// GGUF metadata value type tags (`enum gguf_type`).
public enum GGUFValueType: UInt32, Sendable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Smallest encoding of one value of this type (used to bound array counts by the bytes left).
    var minEncodedBytes: Int {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string: return 8       // u64 length, possibly zero bytes of text
        case .array: return 12       // u32 element type + u64 count
        }
    }
}

/// One GGUF metadata value. Arrays may nest (arrays of arrays), each level homogeneous.
public enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16)
    case uint32(UInt32), int32(Int32), uint64(UInt64), int64(Int64)
    case float32(Float), float64(Double)
    case bool(Bool)
    case string(String)
    /// Elements all of `elementType` (kept so an empty array still round-trips with its type).
    case array(elementType: GGUFValueType, [GGUFValue])

    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .uint64: return .uint64
        case .int64: return .int64
        case .float32: return .float32
        case .float64: return .float64
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        }
    }

    /// Any integer type as Int (nil for non-integers or a UInt64 above Int.max).
    public var int: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return v <= UInt64(Int.max) ? Int(v) : nil
        case .int64(let v): return Int(v)
        default: return nil
        }
    }

    /// Any numeric type as Double.
    public var double: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return int.map(Double.init)
        }
    }

    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var array: [GGUFValue]? { if case .array(_, let a) = self { return a }; return nil }

    public var stringArray: [String]? {
        guard case .array(let t, let a) = self, t == .string || a.isEmpty else { return nil }
        var out: [String] = []
        out.reserveCapacity(a.count)
        for v in a { guard let s = v.string else { return nil }; out.append(s) }
        return out
    }

    public var intArray: [Int]? {
        guard let a = array else { return nil }
        var out: [Int] = []
        out.reserveCapacity(a.count)
        for v in a { guard let i = v.int else { return nil }; out.append(i) }
        return out
    }

    public var floatArray: [Double]? {
        guard let a = array else { return nil }
        var out: [Double] = []
        out.reserveCapacity(a.count)
        for v in a { guard let d = v.double else { return nil }; out.append(d) }
        return out
    }
}

/// One tensor's header entry. `offset` is relative to the start of the data section.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    public let type: GGMLType
    /// ggml order: dims[0] is the innermost (contiguous) dimension, i.e. the row length.
    public let dims: [Int]
    public let offset: Int
    public let byteSize: Int

    public var elementCount: Int { dims.reduce(1, *) }
    /// Number of rows (product of all dims but the first).
    public var rowCount: Int { dims.dropFirst().reduce(1, *) }
}

/// Everything that can be wrong with a GGUF file. Each case names the problem and where.
public enum GGUFError: Error, Sendable, Equatable, CustomStringConvertible {
    case cannotOpen(path: String, errno: Int32)
    case cannotMap(path: String, errno: Int32)
    case truncated(what: String, offset: Int, needed: Int, available: Int)
    case badMagic(UInt32)
    case unsupportedVersion(UInt32)
    case countTooLarge(what: String, count: UInt64, limit: Int)
    case stringTooLong(what: String, length: UInt64, limit: Int)
    case invalidUTF8(what: String, offset: Int)
    case unknownValueType(key: String, raw: UInt32)
    case nestingTooDeep(key: String)
    case duplicateKey(String)
    case badAlignment(UInt64)
    case wrongMetadataType(key: String, expected: String)
    case duplicateTensor(String)
    case badDims(tensor: String, dims: [UInt64], reason: String)
    case unknownTensorType(tensor: String, raw: UInt32)
    case rowNotBlockMultiple(tensor: String, type: GGMLType, rowLength: Int)
    case misalignedTensor(tensor: String, offset: UInt64, alignment: Int)
    case tensorOutOfBounds(tensor: String, offset: UInt64, size: Int, dataSize: Int)
    case overlappingTensors(String, String)
    case arithmeticOverflow(what: String)
    case missingKey(String)
    case invalidValue(key: String, reason: String)

    public var description: String {
        switch self {
        case .cannotOpen(let p, let e): return "GGUF: cannot open \(p) (errno \(e))"
        case .cannotMap(let p, let e): return "GGUF: cannot mmap \(p) (errno \(e))"
        case .truncated(let w, let o, let n, let a):
            return "GGUF: file truncated reading \(w) at offset \(o): need \(n) bytes, \(a) left"
        case .badMagic(let m): return "GGUF: bad magic 0x\(String(m, radix: 16)) (expected 'GGUF')"
        case .unsupportedVersion(let v): return "GGUF: unsupported version \(v) (only 3 is read)"
        case .countTooLarge(let w, let c, let l): return "GGUF: \(w) count \(c) exceeds limit \(l)"
        case .stringTooLong(let w, let n, let l): return "GGUF: \(w) string length \(n) exceeds limit \(l)"
        case .invalidUTF8(let w, let o): return "GGUF: \(w) at offset \(o) is not valid UTF-8"
        case .unknownValueType(let k, let r): return "GGUF: key '\(k)' has unknown value type \(r)"
        case .nestingTooDeep(let k): return "GGUF: key '\(k)' nests arrays too deeply"
        case .duplicateKey(let k): return "GGUF: duplicate metadata key '\(k)'"
        case .badAlignment(let a): return "GGUF: general.alignment \(a) is not a power of two in 1...65536"
        case .wrongMetadataType(let k, let e): return "GGUF: key '\(k)' should be \(e)"
        case .duplicateTensor(let n): return "GGUF: duplicate tensor '\(n)'"
        case .badDims(let t, let d, let r): return "GGUF: tensor '\(t)' has bad dims \(d): \(r)"
        case .unknownTensorType(let t, let r): return "GGUF: tensor '\(t)' has unknown type \(r)"
        case .rowNotBlockMultiple(let t, let ty, let n):
            return "GGUF: tensor '\(t)' row length \(n) is not a multiple of \(ty)'s block size \(ty.blockSize)"
        case .misalignedTensor(let t, let o, let a): return "GGUF: tensor '\(t)' offset \(o) is not aligned to \(a)"
        case .tensorOutOfBounds(let t, let o, let s, let d):
            return "GGUF: tensor '\(t)' (offset \(o), \(s) bytes) extends past the data section (\(d) bytes)"
        case .overlappingTensors(let a, let b): return "GGUF: tensors '\(a)' and '\(b)' overlap"
        case .arithmeticOverflow(let w): return "GGUF: arithmetic overflow computing \(w)"
        case .missingKey(let k): return "GGUF: missing metadata key '\(k)'"
        case .invalidValue(let k, let r): return "GGUF: key '\(k)': \(r)"
        }
    }
}
