// Worker module (placeholder; filled in by its issue).
enum _WorkerPlaceholder {}
