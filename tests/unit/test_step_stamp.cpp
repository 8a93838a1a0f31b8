// The step stamp and the --resume judgement (lib/pipelines/step_stamp.hpp)
// on real files: every way a finished step's options, sources or output can
// change is told apart and named; what cannot change the output is ignored.
// The identities are checked against stat(2) directly.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "checkpoint/staged_output.hpp"
#include "pipelines/step_stamp.hpp"
#include "test_util.hpp"

namespace mb {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

struct Fixture {
  TempDir tmp;
  fs::path src, out;
  StepValues values;
  json sources;

  Fixture() {
    src = tmp.path / "src";
    out = tmp.path / "out";
    fs::create_directories(src);
    fs::create_directories(out / "sub");
    write_bytes(src / "a.bin", "aaaa");
    write_bytes(src / "b.bin", "bbbb");
    write_bytes(out / "shard.h5", "data");
    write_bytes(out / "sub" / "config.json", "{}");
    write_bytes(out / kOutputMarker, "{}");  // written after the stamp: not listed
    values = {{"hf_path", src.string()}, {"out", out.string()}, {"tp", "2"}, {"buffer_mb", "64"}};
    sources = source_identities({src, src / "a.bin", src / "b.bin", src / "later.bin"});
    std::ofstream(out / kStepStamp) << make_step_stamp("p.yaml", 1, "import", values, sources, out);
    // The kernel stamps times from a coarse clock (a tick of up to 10 ms):
    // let it move on, so that the changes below get times of their own.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  StampVerdict judge(const StepValues& v) const { return judge_step_output(out, "import", v); }
  StampVerdict judge() const { return judge(values); }
};

TEST(StepStamp, IdentitiesAreWhatStatSays) {
  Fixture f;
  struct stat st {};
  ASSERT_EQ(::stat((f.src / "a.bin").c_str(), &st), 0);
  const json& id = f.sources.at((f.src / "a.bin").string());
  EXPECT_EQ(id.at("size"), 4);
  EXPECT_EQ(id.at("inode"), st.st_ino);
  EXPECT_EQ(id.at("mtime_ns"), int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec);
  EXPECT_EQ(id.at("ctime_ns"), int64_t(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec);
  EXPECT_EQ(f.sources.at((f.src / "later.bin").string()), json({{"exists", false}}));
  const json stamp = json::parse(read_text_file(f.out / kStepStamp));
  json listed = json::array();
  for (const auto& [k, v] : stamp.at("output").items()) listed.push_back(k);
  EXPECT_EQ(listed, json({"shard.h5", "sub", "sub/config.json"}));  // not the stamp, not the marker
}

TEST(StepStamp, UnchangedIsFinished) {
  Fixture f;
  const StampVerdict v = f.judge();
  EXPECT_TRUE(v.finished) << v.why;
  EXPECT_EQ(v.why, f.out.string() +
                       " is committed and matches this step (3 option(s), 4 source(s), 3 output "
                       "entr(ies) unchanged)");
}

TEST(StepStamp, SpeedAndRunKnobsDoNotCount) {
  Fixture f;
  StepValues v = f.values;
  v[3].second = "1024";  // buffer_mb
  v.push_back({"device", "cuda"});
  v.push_back({"io", "direct"});
  v.push_back({"overwrite", "true"});
  v.push_back({"resume", "true"});
  v.push_back({"quiet", "true"});
  EXPECT_TRUE(f.judge(v).finished) << f.judge(v).why;
}

TEST(StepStamp, OptionsThatShapeTheOutputCount) {
  Fixture f;
  StepValues v = f.values;
  v[2].second = "4";  // tp
  v.push_back({"dtype", "keep"});
  const StampVerdict r = f.judge(v);
  EXPECT_FALSE(r.finished);
  EXPECT_EQ(r.why, f.out.string() +
                       " was committed with other options: dtype is keep, was not set; tp is 4, "
                       "was 2");
  StepValues w = f.values;
  w.erase(w.begin() + 2);
  EXPECT_EQ(f.judge(w).why,
            f.out.string() + " was committed with other options: tp is not set, was 2");
  EXPECT_EQ(judge_step_output(f.out, "reshard", f.values).why,
            f.out.string() + " was committed by megabridge import, not reshard");
}

TEST(StepStamp, ASourceRewrittenInPlaceIsNamed) {
  Fixture f;
  struct stat before {};
  ::stat((f.src / "b.bin").c_str(), &before);
  write_bytes(f.src / "b.bin", "BBBB");  // same size, same inode
  const struct timespec old_times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, (f.src / "b.bin").c_str(), old_times, 0), 0);  // mtime put back
  const StampVerdict v = f.judge();
  EXPECT_FALSE(v.finished);
  // Only ctime, which no user can set, still tells.
  EXPECT_EQ(v.why.rfind("since " + f.out.string() + " was committed, source " +
                            (f.src / "b.bin").string() + " changed: ctime ",
                        0),
            0u)
      << v.why;
  EXPECT_EQ(v.why.find("mtime"), std::string::npos) << v.why;
  EXPECT_EQ(v.why.find("inode"), std::string::npos) << v.why;
}

TEST(StepStamp, SourcesGoneOrNewAndTheDirectoryListing) {
  Fixture f;
  fs::remove(f.src / "a.bin");
  write_bytes(f.src / "later.bin", "x");
  const StampVerdict v = f.judge();
  EXPECT_FALSE(v.finished);
  // The directory comes first (in path order) and its listing changed.
  EXPECT_EQ(
      v.why.rfind(
          "since " + f.out.string() + " was committed, source " + f.src.string() + " changed: ", 0),
      0u)
      << v.why;
  EXPECT_NE(v.why.find("(and 2 more source(s) changed)"), std::string::npos) << v.why;
}

TEST(StepStamp, AGoneSourceIsNamed) {
  Fixture f;
  f.sources = source_identities({f.src / "a.bin"});
  std::ofstream(f.out / kStepStamp)
      << make_step_stamp("p.yaml", 1, "import", f.values, f.sources, f.out);
  fs::remove(f.src / "a.bin");
  EXPECT_EQ(f.judge().why, "since " + f.out.string() + " was committed, source " +
                               (f.src / "a.bin").string() + " is gone");
}

TEST(StepStamp, TheOutputMustBeExactlyWhatWasCommitted) {
  {
    Fixture f;
    fs::remove(f.out / "sub" / "config.json");
    const StampVerdict v = f.judge();
    EXPECT_FALSE(v.finished);
    // Removing the file also changed its directory: both are counted.
    EXPECT_EQ(v.why.rfind("since " + f.out.string() + " was committed, output entry " +
                              (f.out / "sub").string() + " changed: ",
                          0),
              0u)
        << v.why;
    EXPECT_NE(v.why.find("(and 1 more output entr(ies) changed)"), std::string::npos) << v.why;
  }
  {
    Fixture f;
    fs::remove(f.out / "shard.h5");
    EXPECT_EQ(f.judge().why, "since " + f.out.string() + " was committed, output entry " +
                                 (f.out / "shard.h5").string() + " is gone");
  }
  {
    Fixture f;
    write_bytes(f.out / "notes.txt", "mine");
    EXPECT_EQ(f.judge().why, "since " + f.out.string() + " was committed, " +
                                 (f.out / "notes.txt").string() +
                                 " appeared in it (the step did not write it)");
  }
  {
    Fixture f;  // the ownership record and the lock are written after the stamp
    write_bytes(f.out / kOutputMarker, "{\"rewritten\": true}");
    EXPECT_TRUE(f.judge().finished) << f.judge().why;
  }
}

TEST(StepStamp, NothingToTrustIsNeverSkipped) {
  Fixture f;
  EXPECT_EQ(judge_step_output(f.tmp.path / "nope", "import", f.values).why,
            (f.tmp.path / "nope").string() + " is not committed yet");
  std::ofstream(f.out / kStepStamp) << "{not json";
  EXPECT_EQ(f.judge().why.rfind((f.out / kStepStamp).string() + " is unreadable: ", 0), 0u);
  // Sources unknown (the step never reported them): never skipped.
  std::ofstream(f.out / kStepStamp)
      << make_step_stamp("p.yaml", 1, "import", f.values, json(), f.out);
  EXPECT_EQ(f.judge().why, (f.out / kStepStamp).string() +
                               " records no identity of the step's sources and output (an older "
                               "megabridge wrote it)");
  fs::remove(f.out / kStepStamp);
  EXPECT_EQ(f.judge().why,
            f.out.string() + " holds no .megabridge-step.json: no pipeline step committed it");
}

}  // namespace
}  // namespace mb
