#ifndef TENURE_CLIBPQ_SHIM_H
#define TENURE_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#endif
