#ifndef TENURE_CZSTD_SHIM_H
#define TENURE_CZSTD_SHIM_H
#include <zstd.h>
#include <zstd_errors.h>
#endif
