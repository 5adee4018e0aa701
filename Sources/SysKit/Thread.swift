import Glibc

/// A joinable POSIX thread (for hot loops that must not run on Swift's cooperative pool).
public struct JoinableThread: ~Copyable {
    let handle: pthread_t
    private var joined = false

    /// Starts `body` on a new thread.
    public init(_ body: @escaping @Sendable () -> Void) throws(SysError) {
        let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
        var handle = pthread_t()
        let rc = pthread_create(&handle, nil, { arg in
            guard let arg else { return nil }
            let body = Unmanaged<ThreadBody>.fromOpaque(arg).takeRetainedValue()
            body.run()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<ThreadBody>.fromOpaque(box).release()
            throw SysError(errno: rc, call: "pthread_create")
        }
        self.handle = handle
    }

    /// Waits for the thread to finish.
    public consuming func join() {
        _ = pthread_join(handle, nil)
        joined = true
    }

    deinit {
        if !joined { _ = pthread_join(handle, nil) }
    }
}

private final class ThreadBody {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}
