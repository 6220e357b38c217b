/*
 * jsonmem.h: jansson's allocations, with a small cache of freed blocks
 * per thread.  Parsing one update allocates and frees about a hundred
 * small blocks, more of one size than glibc's per-thread cache keeps (7),
 * so most went through the arena's slow paths under its lock.  The blocks
 * are plain malloc() blocks: whatever jansson hands out (json_dumps()'s
 * text) may still be released with free().
 */
#ifndef TGW_JSONMEM_H
#define TGW_JSONMEM_H

#include <stddef.h>

/* Installs the allocator (json_set_alloc_funcs): once, before any JSON
 * value exists and before any thread starts.  A no-op in a sanitizer
 * build, so that AddressSanitizer sees every jansson block. */
void jsonmem_init(void);
/* The blocks the calling thread keeps for jansson: 0 before
 * jsonmem_init() or when it is a no-op (tests). */
size_t jsonmem_cached(void);

#endif
