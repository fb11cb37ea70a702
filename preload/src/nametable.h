/* The name table (nametable.c): answers the name service already knows, read in the program.
 * Internal; nothing here is exported. */
#ifndef TAILPROXY_NAMETABLE_H
#define TAILPROXY_NAMETABLE_H

#include "names.h"

#define TP_RES_FROM_TABLE 0x80      /* tp_names.flags: answered by the table, no round trip */

/* tp_resolve(), answered from the name table when it knows the name, else by the name service
 * (one round trip). Same results, same errors. */
HIDDEN int tp_name_lookup(const char *name, int family, int idn, struct tp_names *out);

/* The --verbose line for a lookup done by tp_name_lookup(). */
HIDDEN void tp_name_lookup_log(const char *name, int err, const struct tp_names *nm);

/* The table's own answer: 0 or ENODATA with *out filled (TP_RES_FROM_TABLE set), or -1 when the
 * table does not know the name (or there is no usable table). */
HIDDEN int tp_nametable_answer(const char *name, int family, struct tp_names *out);

#endif
