#include "core/output_lock.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace mb {
namespace fs = std::filesystem;

namespace {

std::string errno_text(int e) {
  return std::strerror(e);
}

// A write lock on the whole file, without waiting. Returns 0, or the errno.
int try_lock(int fd) {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 0;
  fl.l_len = 0;
#ifdef F_OFD_SETLK
  if (::fcntl(fd, F_OFD_SETLK, &fl) == 0) return 0;
  if (errno != EINVAL) return errno;
  fl.l_pid = 0;
#endif
  // No OFD locks (kernel < 3.15): a process-wide POSIX lock does the same
  // here, since this file is opened once per process.
  return ::fcntl(fd, F_SETLK, &fl) == 0 ? 0 : errno;
}

std::string holder_of(int fd) {
  char buf[512];
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return "another job (its pid and host are not recorded yet)";
  try {
    const auto j = nlohmann::json::parse(std::string(buf, static_cast<size_t>(n)));
    return fmt::format("pid {} on host {} since {}", j.at("pid").get<long>(),
                       j.at("host").get<std::string>(), j.at("since").get<std::string>());
  } catch (const std::exception&) {
    return "another job (its lock file is unreadable)";
  }
}

std::string now_utc() {
  const std::time_t now = std::time(nullptr);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return when;
}

bool empty_dir(const fs::path& p) {
  std::error_code ec;
  return fs::directory_iterator(p, ec) == fs::directory_iterator();
}

}  // namespace

OutputLock::OutputLock(const fs::path& staging, const fs::path& target, bool& created) {
  const fs::path lock_path = staging / kLockFileName;
  for (int attempt = 0; attempt < 50; ++attempt) {
    created = ::mkdir(staging.c_str(), 0755) == 0;
    if (!created) {
      if (errno != EEXIST)
        throw Error("cannot create the staging directory {}: {}", staging.string(),
                    errno_text(errno));
      struct stat st {};
      if (::lstat(staging.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        throw Error("{} exists and is not a directory; megabridge stages {} there: move it away",
                    staging.string(), target.string());
      // Ours if it holds our lock or job file (an earlier job's, or one just
      // made by a job that is about to lock it), or nothing at all.
      std::error_code ec;
      if (!fs::exists(lock_path, ec) && !fs::exists(staging / ".megabridge-job", ec) &&
          !empty_dir(staging))
        throw Error(
            "{} exists and was not made by megabridge (it has no {}); megabridge stages {} "
            "there: move it away",
            staging.string(), kLockFileName, target.string());
    }
    const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
      if (errno == ENOENT) continue;  // the directory was committed or removed meanwhile
      throw Error("cannot open the lock file {}: {}", lock_path.string(), errno_text(errno));
    }
    const int err = try_lock(fd);
    if (err == EAGAIN || err == EACCES) {
      const std::string who = holder_of(fd);
      ::close(fd);
      throw Error(
          "{} is being written by {}; wait for that job or stop it (its staging directory "
          "is {})",
          target.string(), who, staging.string());
    }
    if (err != 0) {
      ::close(fd);
      throw Error(
          "cannot lock {}: {}. megabridge needs working file locks on the output's "
          "filesystem (NFS: NFSv4, or NFSv3 with rpc.statd/lockd; Lustre: mount with -o flock)",
          lock_path.string(), errno_text(err));
    }
    // The file locked must still be the one at that name: a job that
    // committed (renamed the directory) or removed it meanwhile leaves us an
    // orphan inode, and we start over.
    struct stat held {
    }, named{};
    if (::fstat(fd, &held) != 0 || ::stat(lock_path.c_str(), &named) != 0 ||
        held.st_ino != named.st_ino || held.st_dev != named.st_dev) {
      ::close(fd);
      continue;
    }
    char host[256] = "unknown";
    ::gethostname(host, sizeof host - 1);
    const std::string who = nlohmann::json{
        {"pid", static_cast<long>(::getpid())},
        {"host", host},
        {"since", now_utc()}}.dump();
    if (::ftruncate(fd, 0) != 0 ||
        ::pwrite(fd, who.data(), who.size(), 0) != static_cast<ssize_t>(who.size())) {
      const int e = errno;
      ::close(fd);
      throw Error("cannot write the lock file {}: {}", lock_path.string(), errno_text(e));
    }
    fd_ = fd;
    return;
  }
  throw Error("cannot lock {}: it keeps being replaced by other jobs", lock_path.string());
}

OutputLock::~OutputLock() {
  if (fd_ >= 0) ::close(fd_);
}

void OutputLock::release_in(const fs::path& dir) {
  ::unlink((dir / kLockFileName).c_str());
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

}  // namespace mb
