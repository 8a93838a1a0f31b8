// Where outputs may go (issue 11): containment after resolving symlinks and
// "..", the output lock, --overwrite only of our own outputs, side files by
// name, and inputs that are not regular files.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <future>

#include "checkpoint/staged_output.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/output_lock.hpp"
#include "core/path_safety.hpp"
#include "formats/safetensors/hf_checkpoint.hpp"
#include "test_util.hpp"

namespace mb {
namespace {
namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(PathSafety, RelationByWholeComponents) {
  EXPECT_EQ(path_relation("/a/b", "/a/b"), PathRelation::Same);
  EXPECT_EQ(path_relation("/a/b/c", "/a/b"), PathRelation::Inside);
  EXPECT_EQ(path_relation("/a", "/a/b"), PathRelation::Contains);
  EXPECT_EQ(path_relation("/a/bc", "/a/b"), PathRelation::Apart);
  EXPECT_EQ(path_relation("/a/b", "/a/bc"), PathRelation::Apart);
  EXPECT_EQ(path_relation("/x", "/a"), PathRelation::Apart);
  EXPECT_EQ(path_relation("/", "/a"), PathRelation::Contains);
}

TEST(PathSafety, OutputThroughASymlinkResolvesToItsTarget) {
  TempDir t;
  fs::create_directories(t.path / "big" / "meg");
  fs::create_directory_symlink(t.path / "big" / "meg", t.path / "link");
  const fs::path real = fs::canonical(t.path) / "big" / "meg";
  EXPECT_EQ(resolve_output_path(t.path / "link"), real);
  EXPECT_EQ(resolve_output_path(t.path / "link/"), real);
  // A dangling link is followed too: the output is created where it points.
  fs::create_directory_symlink("big/later", t.path / "dangling");
  EXPECT_EQ(resolve_output_path(t.path / "dangling"), fs::canonical(t.path) / "big" / "later");
  // ".." after a symlink is the parent of the link's target, as for the kernel.
  fs::create_directories(t.path / "x" / "y" / "z");
  fs::create_directory_symlink(t.path / "x" / "y" / "z", t.path / "deep");
  EXPECT_EQ(resolve_output_path(t.path / "deep" / ".." / "out"),
            fs::canonical(t.path) / "x" / "y" / "out");
  EXPECT_EQ(resolve_output_path(t.path / "a" / ".." / "b"), fs::canonical(t.path) / "b");
}

TEST(PathSafety, OutputOverlappingAnInputIsRefusedNamingBoth) {
  TempDir t;
  const fs::path data = t.path / "data", hf = data / "hf";
  fs::create_directories(hf);
  fs::create_directory_symlink(hf, t.path / "hf-link");
  // Equal, directly, through "..", with a trailing slash, or through a symlink.
  for (const fs::path& out :
       {hf, data / "hf" / ".." / "hf", fs::path(hf.string() + "/"), t.path / "hf-link"}) {
    const std::string e = error_of([&] {
      check_output_apart({out, "--out"}, {{hf, "--hf-path"}});
    });
    EXPECT_NE(e.find("is the same path as --hf-path"), std::string::npos) << out << ": " << e;
    EXPECT_NE(e.find(hf.string()), std::string::npos) << e;
  }
  // The output contains the input (the `--out data` typo).
  std::string e = error_of([&] { check_output_apart({data, "--out"}, {{hf, "--hf-path"}}); });
  EXPECT_NE(e.find("--out " + data.string() + " contains --hf-path " + hf.string()),
            std::string::npos)
      << e;
  // The output lies inside the input, also when the input is given through a link.
  e = error_of([&] {
    check_output_apart({hf / "meg", "--out"}, {{t.path / "hf-link", "--hf-path"}});
  });
  EXPECT_NE(e.find("lies inside --hf-path"), std::string::npos) << e;
  // Siblings, and names that only share a prefix, are fine.
  EXPECT_NO_THROW(check_output_apart({data / "meg", "--out"}, {{hf, "--hf-path"}}));
  EXPECT_NO_THROW(check_output_apart({data / "hf2", "--out"}, {{hf, "--hf-path"}}));
  EXPECT_NO_THROW(check_output_apart({data / "meg", "--out"}, {{fs::path(), "--hf-config"}}));
}

TEST(PathSafety, FifoAndDevicesAreRefusedWithoutBlocking) {
  TempDir t;
  const fs::path fifo = t.path / "config.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  // On a blocking open this would wait forever for a writer.
  auto f = std::async(std::launch::async, [&] { return error_of([&] { read_text_file(fifo); }); });
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "open of a FIFO blocked";
  EXPECT_NE(f.get().find(fifo.string() + " is a FIFO (named pipe), not a regular file"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              require_regular_file(fifo, "shard file");
            }).find("shard file " + fifo.string() + " is a FIFO"),
            std::string::npos);
  EXPECT_NE(error_of([] { File("/dev/null", File::Mode::Read); }).find("a character device"),
            std::string::npos);
  EXPECT_NE(error_of([&] { File(t.path, File::Mode::Read); }).find("a directory"),
            std::string::npos);
}

TEST(PathSafety, FileIdentityChangesWhenRewrittenInPlace) {
  TempDir t;
  const fs::path p = t.path / "w.safetensors";
  write_bytes(p, "aaaa");
  const auto a = file_identity(p);
  ::usleep(20000);
  write_bytes(p, "bbbb");  // same name, same size
  const auto b = file_identity(p);
  EXPECT_EQ(a.at("size"), b.at("size"));
  EXPECT_NE(a, b);
  EXPECT_EQ(a.at("inode"), b.at("inode"));
}

TEST(OutputLock, ASecondHolderFailsAtOnceNamingTheFirst) {
  TempDir t;
  bool created = false;
  OutputLock first(t.path / "meg.partial", t.path / "meg", created);
  EXPECT_TRUE(created);
  bool again = true;
  const std::string e =
      error_of([&] { OutputLock second(t.path / "meg.partial", t.path / "meg", again); });
  EXPECT_NE(e.find((t.path / "meg").string() + " is being written by pid " +
                   std::to_string(::getpid()) + " on host "),
            std::string::npos)
      << e;
  EXPECT_NE(e.find(" since 20"), std::string::npos) << e;
  EXPECT_FALSE(again);
}

TEST(OutputLock, AStagingDirectoryThatIsNotOursIsLeftAlone) {
  TempDir t;
  fs::create_directories(t.path / "meg.partial");
  write_bytes(t.path / "meg.partial" / "notes.txt", "mine");
  bool created = false;
  const std::string e =
      error_of([&] { OutputLock l(t.path / "meg.partial", t.path / "meg", created); });
  EXPECT_NE(e.find("was not made by megabridge"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(t.path / "meg.partial" / kLockFileName));
  EXPECT_EQ(read_text_file(t.path / "meg.partial" / "notes.txt"), "mine");
}

TEST(StagedOutput, OverwriteReplacesOnlyOurOwnOutput) {
  TempDir t;
  const fs::path out = t.path / "out";
  {
    StagedOutput s(out, "test");
    s.prepare(false);
    fs::create_directories(s.staging() / "hf");
    write_bytes(s.staging() / "a.h5", "one");
    write_bytes(s.staging() / "hf" / "config.json", "{}");
    s.commit();
  }
  EXPECT_TRUE(fs::exists(out / kOutputMarker));
  EXPECT_FALSE(fs::exists(out / kLockFileName));
  EXPECT_NO_THROW(check_output_is_ours(out));
  // A file the user added makes it not ours to remove.
  write_bytes(out / "hf" / "notes.txt", "mine");
  {
    StagedOutput s(out, "test");
    const std::string e = error_of([&] { s.prepare(true); });
    EXPECT_NE(e.find("holds hf/notes.txt, which megabridge did not write"), std::string::npos) << e;
  }
  fs::remove(out / "hf" / "notes.txt");
  {
    StagedOutput s(out, "test");
    s.prepare(true);
    write_bytes(s.staging() / "b.h5", "two");
    s.commit();
  }
  EXPECT_FALSE(fs::exists(out / "a.h5"));
  EXPECT_EQ(read_text_file(out / "b.h5"), "two");
  // Nothing is left beside it: no staging, no aside directory, and a
  // user's "<out>.old" is not a name megabridge uses.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(t.path))
    names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"out"});
  // A directory megabridge did not write is never replaced.
  fs::create_directories(t.path / "user");
  write_bytes(t.path / "user" / "model.safetensors", "weights");
  StagedOutput s(t.path / "user", "test");
  const std::string e = error_of([&] { s.prepare(true); });
  EXPECT_NE(e.find("was not written by megabridge (it has no .megabridge-output.json)"),
            std::string::npos)
      << e;
  EXPECT_FALSE(fs::exists(t.path / "user.partial"));
}

TEST(StagedOutput, ASymlinkedOutputIsFilledThroughTheLink) {
  TempDir t;
  fs::create_directories(t.path / "big");
  fs::create_directory_symlink(t.path / "big" / "meg",
                               t.path / "meg");  // dangling until the commit
  StagedOutput s(t.path / "meg", "test");
  EXPECT_EQ(s.staging(), fs::canonical(t.path) / "big" / "meg.partial");
  s.prepare(false);
  write_bytes(s.staging() / "a.h5", "one");
  s.commit();
  EXPECT_TRUE(fs::is_symlink(t.path / "meg"));
  EXPECT_EQ(read_text_file(t.path / "big" / "meg" / "a.h5"), "one");
}

TEST(SideFiles, OnlyKnownNamesAndOnlyInsideTheCheckpoint) {
  EXPECT_TRUE(is_hf_side_file("tokenizer.json"));
  EXPECT_TRUE(is_hf_side_file("chat_template.jinja"));
  EXPECT_TRUE(is_hf_side_file("video_preprocessor_config.json"));
  EXPECT_FALSE(is_hf_side_file("pytorch_model.bin"));
  EXPECT_FALSE(is_hf_side_file("README.md"));
  TempDir t;
  const fs::path snap = t.path / "models--Qwen--x" / "snapshots" / "abc";
  fs::create_directories(snap);
  fs::create_directories(t.path / "models--Qwen--x" / "blobs");
  write_bytes(t.path / "models--Qwen--x" / "blobs" / "f00d", "{}");
  write_bytes(t.path / "secret", "key");
  write_bytes(snap / "vocab.json", "{}");
  fs::create_symlink("../../blobs/f00d", snap / "tokenizer.json");
  fs::create_symlink(t.path / "secret", snap / "merges.txt");
  ASSERT_EQ(::mkfifo((snap / "added_tokens.json").c_str(), 0644), 0);
  std::string why;
  EXPECT_TRUE(side_file_is_safe(snap, "vocab.json", why));
  EXPECT_TRUE(side_file_is_safe(snap, "tokenizer.json", why)) << why;
  EXPECT_FALSE(side_file_is_safe(snap, "merges.txt", why));
  EXPECT_NE(why.find("outside the checkpoint"), std::string::npos) << why;
  EXPECT_FALSE(side_file_is_safe(snap, "added_tokens.json", why));
}

}  // namespace
}  // namespace mb
