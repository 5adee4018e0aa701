// Request-path tracing (see sy_trace.h).
#include "sy_trace.h"
#include "sy_sys.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct { uint64_t id; uint64_t t[SY_TRACE_POINTS]; } sy_trace_row;
static sy_trace_row *g_rows;   // SY_TRACE_SLOTS rows once enabled

int sy_trace_enable(void) {
    if (g_rows) return 0;
    g_rows = calloc(SY_TRACE_SLOTS, sizeof(sy_trace_row));
    return g_rows ? 0 : -1;
}

int sy_trace_enabled(void) { return g_rows != NULL; }

static sy_trace_row *row(uint64_t id) {
    sy_trace_row *r = &g_rows[id % SY_TRACE_SLOTS];
    if (r->id != id) {   // a newer request takes the slot over
        for (int p = 0; p < SY_TRACE_POINTS; p++) r->t[p] = 0;
        r->id = id;
    }
    return r;
}

void sy_trace_mark(uint64_t id, enum sy_trace_point point) {
    if (!g_rows || (int)point < 0 || (int)point >= SY_TRACE_POINTS) return;
    row(id)->t[point] = sy_monotonic_ns();
}

void sy_trace_mark_first(uint64_t id, enum sy_trace_point point) {
    if (!g_rows || (int)point < 0 || (int)point >= SY_TRACE_POINTS) return;
    sy_trace_row *r = row(id);
    if (r->t[point] == 0) r->t[point] = sy_monotonic_ns();
}

int sy_trace_dump(const char *path, uint64_t max_id) {
    if (!g_rows) return 0;
    FILE *f = fopen(path, "w");
    if (!f) return -errno;
    for (uint64_t id = max_id > SY_TRACE_SLOTS ? max_id - SY_TRACE_SLOTS + 1 : 1; id <= max_id; id++) {
        const sy_trace_row *r = &g_rows[id % SY_TRACE_SLOTS];
        if (r->id != id) continue;
        fprintf(f, "%llu", (unsigned long long)id);
        for (int p = 0; p < SY_TRACE_POINTS; p++) fprintf(f, " %llu", (unsigned long long)r->t[p]);
        fputc('\n', f);
    }
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) return -EIO;
    return 0;
}
