// One job per output. The job that writes `<out>` holds an exclusive lock on
// `<out>.partial/.megabridge-lock` from before it stages anything until it has
// committed or died: the kernel drops the lock with the process, so a killed
// job never leaves a lock behind, and a second job on the same output fails at
// once with "<out> is being written by pid P on host H since T".
//
// The lock is an open-file-description lock (fcntl F_OFD_SETLK, falling back
// to a classic POSIX record lock on kernels without it). On NFS it is carried
// by the NFS lock protocol (NFSv4, or NFSv3 with rpc.statd/lockd running); on
// Lustre the clients must be mounted with `-o flock` (`localflock` only
// protects jobs on the same node). Where the filesystem cannot lock at all the
// job stops with that error instead of running unprotected.
#pragma once

#include <filesystem>
#include <string>

namespace mb {

inline constexpr const char* kLockFileName = ".megabridge-lock";

class OutputLock {
 public:
  // Creates `staging` if it does not exist and locks it. `target` only names
  // the output in the message when another job holds the lock. `created`
  // says whether this call made the directory (false: it was left by an
  // earlier job, now dead, or made by the user; see StagedOutput).
  OutputLock(const std::filesystem::path& staging, const std::filesystem::path& target,
             bool& created);
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

  // After the staging directory was renamed to `dir`: removes the lock file
  // there and releases the lock.
  void release_in(const std::filesystem::path& dir);

 private:
  int fd_ = -1;
};

}  // namespace mb
