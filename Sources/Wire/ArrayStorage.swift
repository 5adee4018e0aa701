// Small helpers for the reused buffers of the per-request paths (worker and front).

extension Array {
    /// Empties the array and keeps its storage, element by element from the end: the per-step and
    /// per-event buffers of the engine loop and the front hold a handful of elements, and
    /// `removeAll(keepingCapacity: true)` goes through the generic `replaceSubrange`, about twice the cost
    /// for a few enum elements (measured).
    @inlinable public mutating func removeAllKeepingStorage() {
        while !isEmpty { removeLast() }
    }
}
