// Front module (placeholder; filled in by its issue).
enum _FrontPlaceholder {}
