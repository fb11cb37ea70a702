/* A read-only table the proxy publishes in the run directory (the routing table, the name
 * table), mapped once per process image. */
#ifndef TAILPROXY_MAPFILE_H
#define TAILPROXY_MAPFILE_H

#include <stddef.h>
#include <stdint.h>

struct tp_mapfile {
	const char *env;                        /* the variable naming the file */
	size_t size;                            /* bytes mapped; a shorter file is refused */
	int (*header_ok)(const uint8_t *);      /* the header as the proxy wrote it */
	const uint8_t *mapped;                  /* the file, or NULL */
	int state;                              /* 0 not yet, 1 being mapped, 2 done */
};

/* The mapped file, or NULL (no variable, not ours, open to others' writes, too short, a bad
 * header, or a mapper that did not finish in time). Thread-safe; no lock, no fd kept. */
__attribute__((visibility("hidden"))) const uint8_t *tp_mapfile_get(struct tp_mapfile *m);

#endif
