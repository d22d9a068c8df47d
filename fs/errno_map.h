// The one place a Status becomes an errno, at the FUSE edge. Each EIO site
// also logs a numbered line (cvmfs's idea), so an EIO in the field points at
// one place in the code.
#ifndef REGFS_FS_ERRNO_MAP_H_
#define REGFS_FS_ERRNO_MAP_H_

#include "reader/base/status.h"

namespace regfs {

int StatusToErrno(const Status& s);
// A read of file data that failed: always EIO. Whatever went wrong below
// (a registry that forgot the blob, refused us, a corrupt chunk), the file
// exists and was opened; ENOENT, EACCES or EINVAL from read(2) would tell a
// program something false about the file.
int ReadFailureErrno(const Status& s);

}  // namespace regfs

#endif  // REGFS_FS_ERRNO_MAP_H_
