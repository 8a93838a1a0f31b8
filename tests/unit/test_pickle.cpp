// The restricted pickle reader and the protocol-2 writer (spec §2.5).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>

#include "checkpoint/torch_dist_output.hpp"
#include "core/error.hpp"
#include "formats/torch_dist/pickle.hpp"
#include "formats/torch_dist/torch_save.hpp"

using namespace mb;
using pickle::Value;
using K = Value::Kind;

namespace {

std::string hex(std::string_view s) {
  std::string o;
  for (unsigned char c : s) o += fmt::format("{:02x}", c);
  return o;
}
std::string unhex(std::string_view h) {
  std::string o;
  for (size_t k = 0; k + 1 < h.size(); k += 2) o += static_cast<char>(std::stoi(std::string(h.substr(k, 2)), nullptr, 16));
  return o;
}
// The body of a protocol-2 pickle: without PROTO 2 and STOP.
std::string body(pickle::Writer& w) {
  std::string s = w.finish();
  EXPECT_EQ(s.substr(0, 2), std::string("\x80\x02"));
  EXPECT_EQ(s.back(), '.');
  return s.substr(2, s.size() - 3);
}
std::string u32(uint32_t n) {
  std::string s;
  for (int k = 0; k < 4; ++k) s += static_cast<char>((n >> (8 * k)) & 0xff);
  return s;
}
// A string literal with embedded NULs.
template <size_t N>
std::string B(const char (&s)[N]) {
  return std::string(s, N - 1);
}
std::string binunicode(std::string_view s) { return "X" + u32(static_cast<uint32_t>(s.size())) + std::string(s); }

Value load(std::string_view data, const std::set<std::string>& allowed = {}) {
  return pickle::loads(data, allowed, "test.pkl");
}

// Expects loads() to fail with a message that names the file and contains `needle`.
void expect_error(std::string_view data, const std::string& needle, const std::set<std::string>& allowed = {}) {
  try {
    pickle::loads(data, allowed, "evil.pkl");
    FAIL() << "expected an error containing '" << needle << "' for " << hex(data);
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(needle), std::string::npos) << m;
    EXPECT_NE(m.find("evil.pkl"), std::string::npos) << m;
  }
}

}  // namespace

TEST(Pickle, IntegersAreEncodedAsCPythonProtocol2) {
  // Expected bytes from CPython: pickle.dumps(x, protocol=2) without PROTO/STOP.
  const std::vector<std::pair<int64_t, std::string>> cases = {
      {0, "4b00"},
      {255, "4bff"},
      {256, "4d0001"},
      {65535, "4dffff"},
      {65536, "4a00000100"},
      {-1, "4affffffff"},
      {-129, "4a7fffffff"},
      {2147483647, "4affffff7f"},
      {2147483648, "8a050000008000"},
      {-2147483648LL, "4a00000080"},
      {-2147483649LL, "8a05ffffff7fff"},
      {4294967396LL, "8a056400000001"},
      {549755813888LL, "8a06000000008000"},
      {-549755813888LL, "8a050000000080"},
      {140737488355328LL, "8a0700000000008000"},
      {INT64_MAX, "8a08ffffffffffffff7f"},
      {INT64_MIN, "8a080000000000000080"},
  };
  for (const auto& [v, want] : cases) {
    pickle::Writer w;
    w.integer(v);
    const std::string full = w.finish();
    EXPECT_EQ(hex(full.substr(2, full.size() - 3)), want) << v;
    const Value back = load(full);
    ASSERT_TRUE(back.is(K::Int)) << v;
    EXPECT_EQ(back.i, v);
  }
}

TEST(Pickle, ScalarsStringsAndGlobals) {
  pickle::Writer w;
  w.floating(3.0);
  w.string("ab");
  w.boolean(true);
  w.boolean(false);
  w.none();
  w.global("torch", "Size");
  EXPECT_EQ(hex(body(w)), "474008000000000000" "5802000000616288894e63746f7263680a53697a650a");
}

TEST(Pickle, TorchSizeAsTheSpecShowsIt) {
  // §2.5.3: c "torch\nSize\n" M 00 08 85 85 R.
  pickle::Writer w;
  w.torch_size({2048});
  EXPECT_EQ(body(w), B("ctorch\nSize\nM\x00\x08\x85\x85R"));
  pickle::Writer w0;
  w0.torch_size({});
  EXPECT_EQ(body(w0), "ctorch\nSize\n)\x85R");
  pickle::Writer w2;
  w2.torch_size({4, 3});
  EXPECT_EQ(body(w2), "ctorch\nSize\nK\x04K\x03\x86\x85R");
  pickle::Writer w4;
  w4.torch_size({1, 2, 3, 4});
  EXPECT_EQ(body(w4), "ctorch\nSize\n(K\x01K\x02K\x03K\x04t\x85R");
}

TEST(Pickle, TensorDataPklIsTheSpecExampleWithoutMemo) {
  // §2.6.3's bytes for a bf16 (2, 3) tensor, with the BINPUTs left out.
  const std::string want = std::string("\x80\x02") + "ctorch._utils\n_rebuild_tensor_v2\n" + "((" +
                           binunicode("storage") + "ctorch\nBFloat16Storage\n" + binunicode("0") +
                           binunicode("cpu") + "K\x06" + "tQ" + std::string("K\x00", 2) + "K\x02K\x03\x86" +
                           "K\x03K\x01\x86" + "\x89" + "ccollections\nOrderedDict\n)R" + "tR.";
  pickle::Writer w;
  pickle_tensor(w, "0", DType::BF16, {2, 3});
  EXPECT_EQ(hex(w.finish()), hex(want));
}

TEST(Pickle, CommonDictMatchesCPython) {
  // pickle.dumps({...common.pt...}, protocol=2) with its BINPUTs removed.
  // The library's own pickle, as import writes it into common.pt.
  EXPECT_EQ(hex(common_pt_pickle()),
            "80027d285812000000636865636b706f696e745f76657273696f6e474008000000000000580900000069746572"
            "6174696f6e4b005810000000636f6e74656e745f6d657461646174617d28581600000073696e676c65746f6e5f"
            "6c6f63616c5f73686172647389581a000000636861696e65645f6f7074696d5f61766f69645f707265666978887575"
            "2e");
}

TEST(Pickle, RoundTripThroughTheReader) {
  pickle::Writer w;
  w.global("mod", "Cls");
  w.empty_tuple();
  w.newobj();
  w.empty_dict();
  w.mark();
  w.string("name");
  w.string("décor");
  w.string("list");
  w.empty_list();
  w.mark();
  w.integer(-5);
  w.floating(0.25);
  w.none();
  w.appends();
  w.string("size");
  w.torch_size({7, 8});
  w.string("one");
  w.empty_list();
  w.integer(1);
  w.append();
  w.setitems();
  w.build();
  const Value v = load(w.finish(), {"mod.Cls", "torch.Size"});
  ASSERT_TRUE(v.is(K::Object));
  EXPECT_EQ(v.cls->s, "mod.Cls");
  EXPECT_TRUE(v.args->is(K::Tuple));
  EXPECT_TRUE(v.args->items.empty());
  ASSERT_NE(v.attr("name"), nullptr);
  EXPECT_EQ(v.attr("name")->s, "décor");
  const Value* l = v.attr("list");
  ASSERT_NE(l, nullptr);
  ASSERT_EQ(l->items.size(), 3u);
  EXPECT_EQ(l->items[0].i, -5);
  EXPECT_EQ(l->items[1].f, 0.25);
  EXPECT_TRUE(l->items[2].is(K::None));
  const Value* s = v.attr("size");
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(s->is(K::Object));
  EXPECT_EQ(s->cls->s, "torch.Size");
  ASSERT_EQ(s->args->items.size(), 1u);
  EXPECT_EQ(s->args->items[0].items.size(), 2u);
  EXPECT_EQ(s->args->items[0].items[1].i, 8);
  EXPECT_TRUE(s->state->is(K::None));  // no BUILD
  EXPECT_EQ(v.attr("one")->items.at(0).i, 1);
  EXPECT_EQ(v.attr("missing"), nullptr);
  EXPECT_EQ(v.describe(), "mod.Cls object");
}

TEST(Pickle, DecodesProtocol4WithFramesMemoAndStackGlobal) {
  // Protocol-4 opcodes as CPython writes them for
  // [OrderedDict(a=1), 'xy', b'\x01\x02', {3}, frozenset(), (1.5, None, True), 'xy'].
  const std::string data = B("\x80\x04\x95") + std::string(8, '\0') + "]\x94(" +
                           "\x8c\x0b" "collections\x94" "\x8c\x0b" "OrderedDict\x94\x93\x94" ")R\x94" +
                           "\x8c\x01" "a\x94" "K\x01s" + "\x8c\x02xy\x94" + "C\x02\x01\x02\x94" +
                           "\x8f\x94(K\x03\x90" + "(\x91\x94" + "G\x3f\xf8" + std::string(6, '\0') + "N\x88\x87\x94" +
                           "h\x06" + "e.";
  const Value v = load(data, {"collections.OrderedDict"});
  ASSERT_TRUE(v.is(K::List));
  ASSERT_EQ(v.items.size(), 7u);
  const Value& od = v.items[0];
  ASSERT_TRUE(od.is(K::Object));
  EXPECT_EQ(od.cls->s, "collections.OrderedDict");
  ASSERT_NE(od.get("a"), nullptr);  // SETITEM on a dict subclass instance
  EXPECT_EQ(od.get("a")->i, 1);
  EXPECT_EQ(v.items[1].s, "xy");
  EXPECT_TRUE(v.items[2].is(K::Bytes));
  EXPECT_EQ(v.items[2].s, std::string("\x01\x02"));
  ASSERT_TRUE(v.items[3].is(K::List));  // set
  EXPECT_EQ(v.items[3].items.at(0).i, 3);
  EXPECT_TRUE(v.items[4].is(K::List));  // frozenset
  ASSERT_TRUE(v.items[5].is(K::Tuple));
  EXPECT_EQ(v.items[5].items[0].f, 1.5);
  EXPECT_TRUE(v.items[5].items[1].is(K::None));
  EXPECT_TRUE(v.items[5].items[2].b);
  EXPECT_EQ(v.items[6].s, "xy");  // BINGET 5 -> memo entry 5 is 'xy'
}

TEST(Pickle, DecodesTextProtocol0) {
  // CPython 3.11: pickle.dumps({'a': [1, -2, 3.5, 'h\xe9', True], 'b': (None,), 'c': 12345678901234}, protocol=0)
  const std::string data =
      "(dp0\nVa\np1\n(lp2\nI1\naI-2\naF3.5\naVh\xe9\np3\naI01\nasVb\np4\n(Ntp5\nsVc\np6\nL12345678901234L\ns.";
  const Value v = load(data);
  ASSERT_TRUE(v.is(K::Dict));
  const Value* a = v.get("a");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->items.size(), 5u);
  EXPECT_EQ(a->items[0].i, 1);
  EXPECT_EQ(a->items[1].i, -2);
  EXPECT_EQ(a->items[2].f, 3.5);
  EXPECT_EQ(a->items[3].s, "h\xc3\xa9");  // latin-1 byte turned into UTF-8
  EXPECT_TRUE(a->items[4].is(K::Bool));
  EXPECT_TRUE(a->items[4].b);
  ASSERT_TRUE(v.get("b")->is(K::Tuple));
  EXPECT_TRUE(v.get("b")->items.at(0).is(K::None));
  EXPECT_EQ(v.get("c")->i, 12345678901234LL);

  // STRING with escapes, UNICODE with \u escapes, GET of a PUT, POP, DUP, POP_MARK.
  const std::string more = "(S'it\\'s\\n\\x41'\np0\nVx\\u20acy\ng0\nK\x05" "0" "2" "(K\x07" "1" "t.";
  const Value m = load(more);
  ASSERT_TRUE(m.is(K::Tuple));
  ASSERT_EQ(m.items.size(), 4u);
  EXPECT_EQ(m.items[0].s, "it's\nA");
  EXPECT_EQ(m.items[1].s, "x\xe2\x82\xac" "y");
  EXPECT_EQ(m.items[2].s, "it's\nA");
  EXPECT_EQ(m.items[3].s, "it's\nA");  // DUP of the GET result after POP removed K 5
}

TEST(Pickle, DecodesBinaryStringsBytesAndLongs) {
  const std::string data = B("\x80\x05(") + "T" + u32(3) + "abc" + "U\x02hi" + "B" + u32(2) + B("\xff\x00") +
                           "\x8e" + B("\x01\0\0\0\0\0\0\0") + "z" + "\x96" + B("\x02\0\0\0\0\0\0\0") + "qq" +
                           "\x8d" + B("\x01\0\0\0\0\0\0\0") + "u" + B("\x8a\x00") + B("\x8a\x02\xff\x7f") +
                           "\x8b" + u32(2) + B("\x00\x80") + "M\x34\x12" + "J" + u32(0xfffffffe) + "I-7\n" + "t.";
  const Value v = load(data);
  ASSERT_TRUE(v.is(K::Tuple));
  ASSERT_EQ(v.items.size(), 12u);
  EXPECT_EQ(v.items[0].s, "abc");
  EXPECT_TRUE(v.items[0].is(K::String));
  EXPECT_EQ(v.items[1].s, "hi");
  EXPECT_TRUE(v.items[2].is(K::Bytes));
  EXPECT_EQ(v.items[2].s, std::string("\xff\x00", 2));
  EXPECT_EQ(v.items[3].s, "z");
  EXPECT_EQ(v.items[4].s, "qq");
  EXPECT_TRUE(v.items[4].is(K::Bytes));
  EXPECT_EQ(v.items[5].s, "u");
  EXPECT_TRUE(v.items[5].is(K::String));
  EXPECT_EQ(v.items[6].i, 0);
  EXPECT_EQ(v.items[7].i, 0x7fff);
  EXPECT_EQ(v.items[8].i, -32768);
  EXPECT_EQ(v.items[9].i, 0x1234);
  EXPECT_EQ(v.items[10].i, -2);
  EXPECT_EQ(v.items[11].i, -7);
}

TEST(Pickle, ObjectsReduceBuildPersistentIdsInstAndObj) {
  const std::set<std::string> allowed = {"m.C", "m.f", "m.D"};
  // NEWOBJ_EX with kwargs, REDUCE, BUILD with dict then a second BUILD merging,
  // BINPERSID, PERSID, INST, OBJ, DICT, LIST.
  const std::string data = std::string("\x80\x04(") + "cm\nC\n)}\x92" + "}X" + u32(1) + "aK\x01sb" + "}X" + u32(1) +
                           "bK\x02sb" + "cm\nf\nK\x09\x85R" + "(X" + u32(7) + "storagecm\nD\nt" + "Q" +
                           "Pkey\n" + "(K\x01im\nD\n" + "(cm\nC\nK\x02o" + "(K\x01K\x02" "d" + "(K\x01K\x02l" +
                           "cm\nC\n)}(X" + u32(1) + "kK\x01u\x92" + "t.";
  const Value v = load(data, allowed);
  ASSERT_TRUE(v.is(K::Tuple));
  ASSERT_EQ(v.items.size(), 9u);
  const Value& o = v.items[0];
  ASSERT_TRUE(o.is(K::Object));
  EXPECT_EQ(o.cls->s, "m.C");
  EXPECT_EQ(o.attr("a")->i, 1);
  EXPECT_EQ(o.attr("b")->i, 2);
  const Value& r = v.items[1];
  EXPECT_EQ(r.cls->s, "m.f");
  EXPECT_EQ(r.args->items.at(0).i, 9);
  const Value& pid = v.items[2];
  ASSERT_TRUE(pid.is(K::PersId));
  EXPECT_EQ(pid.items.at(0).items.at(0).s, "storage");
  EXPECT_EQ(pid.items.at(0).items.at(1).s, "m.D");
  ASSERT_TRUE(v.items[3].is(K::PersId));
  EXPECT_EQ(v.items[3].items.at(0).s, "key");
  EXPECT_EQ(v.items[4].cls->s, "m.D");  // INST
  EXPECT_EQ(v.items[4].args->items.at(0).i, 1);
  EXPECT_EQ(v.items[5].cls->s, "m.C");  // OBJ
  EXPECT_EQ(v.items[5].args->items.at(0).i, 2);
  ASSERT_TRUE(v.items[6].is(K::Dict));
  EXPECT_EQ(v.items[6].entries.at(0).first.i, 1);
  EXPECT_EQ(v.items[6].entries.at(0).second.i, 2);
  ASSERT_TRUE(v.items[7].is(K::List));
  EXPECT_EQ(v.items[7].items.size(), 2u);
  const Value& ex = v.items[8];  // NEWOBJ_EX with non-empty kwargs
  ASSERT_EQ(ex.args->items.size(), 1u);
  EXPECT_EQ(ex.args->items[0].get("k")->i, 1);
}

TEST(Pickle, MemoSharesObjectsLikePython) {
  // An object memoized before its BUILD is seen built through a later GET
  // (CPython memoizes TensorProperties, then BUILDs, then re-references it).
  const std::string data = B("\x80\x02" "cm\nC\n)\x81q\x00") + "}X" + u32(1) + "kK\x01sb" + B("h\x00\x86.");
  const Value v = load(data, {"m.C"});
  ASSERT_EQ(v.items.size(), 2u);
  EXPECT_EQ(v.items[0].attr("k")->i, 1);
  ASSERT_NE(v.items[1].attr("k"), nullptr);
  EXPECT_EQ(v.items[1].attr("k")->i, 1);
  // Dict keys can be objects.
  const std::string dk = std::string("\x80\x02}(cm\nC\n)\x81K\x01u.");
  const Value d = load(dk, {"m.C"});
  ASSERT_EQ(d.entries.size(), 1u);
  EXPECT_TRUE(d.entries[0].first.is(K::Object));
  EXPECT_EQ(d.get("x"), nullptr);
}

TEST(Pickle, RefusesGlobalsOutsideTheAllowList) {
  // os.system("ls") via GLOBAL + REDUCE.
  const std::string g = std::string("\x80\x02") + "cos\nsystem\n" + binunicode("ls") + "\x85R.";
  expect_error(g, "refuses to load global 'os.system' at byte 2 (only known checkpoint classes are allowed)");
  expect_error(g, "refuses to load global 'os.system'", {"os.path", "system"});
  // builtins.eval via STACK_GLOBAL.
  const std::string s = std::string("\x80\x04\x8c\x08" "builtins\x8c\x04" "eval\x93") + "\x8c\x01" "1\x85R.";
  expect_error(s, "refuses to load global 'builtins.eval' at byte 18");
  // INST also names a class.
  expect_error("(ios\nsystem\n.", "refuses to load global 'os.system'");
  // Nothing was allowed: even a harmless class is refused.
  expect_error("\x80\x02" "ctorch\nSize\n.", "refuses to load global 'torch.Size'");
}

TEST(Pickle, RejectsMalformedInput) {
  expect_error("\x80\x02" "a.", "stack underflow at byte 2 (opcode APPEND (0x61))");
  expect_error(std::string("\x80\x02K\x01(\x86.", 7), "stack underflow");  // TUPLE2 across a MARK
  expect_error("\x80\x02" "t.", "no MARK");
  expect_error("\x80\x02.", "stack underflow");
  expect_error(std::string("\x80\x02X\xff\xff\xff\xff", 7), "length 4294967295 exceeds the 0 bytes left");
  expect_error(std::string("\x80\x04\x8e\0\0\0\0\0\0\0\x80", 11), "length 9223372036854775808 exceeds");
  expect_error(std::string("\x80\x04\x95\xff\0\0\0\0\0\0\0", 11), "length 255 exceeds");
  expect_error("\x80\x02h\x05.", "bad memo reference 5 (never stored) at byte 2 (opcode BINGET");
  expect_error(B("\x80\x02q\x00."), "stack underflow");
  expect_error("\x80\x02\xff", "unknown opcode at byte 2 (opcode 0xff)");
  expect_error("\x80\x02" "K", "truncated pickle");
  expect_error(std::string("\x80\x02K\x01", 4), "without a STOP");
  expect_error("\x80\x06.", "unsupported pickle protocol 6");
  expect_error(std::string("\x80\x02\x8a\x09\0\0\0\0\0\0\0\0\x01.", 14), "does not fit in 64 bits");
  expect_error("\x80\x02I99999999999999999999\n.", "does not fit in 64 bits");
  expect_error(std::string("\x80\x02") + "K\x01K\x02" + "b.", "BUILD on a int");
  expect_error("\x80\x02\x82\x01.", "extension registry");
  expect_error("\x80\x05\x97.", "out-of-band buffers");
  expect_error(B("\x80\x02]q\x00h\x00" "a."), "recursive structure");
  // Deep nesting.
  std::string deep = "\x80\x02";
  for (int k = 0; k < 2000; ++k) deep += "]";
  for (int k = 0; k < 1999; ++k) deep += "a";
  expect_error(deep + ".", "nests deeper than");
  // A "billion laughs": each level lists the previous one twice.
  std::string laughs = B("\x80\x02]q\x00");
  for (int k = 1; k < 40; ++k)
    laughs += fmt::format("h{}h{}\x86r{}", char(k - 1), char(k - 1), u32(static_cast<uint32_t>(k)));
  expect_error(laughs + ".", "too many values");
}

TEST(Pickle, EveryTruncationAndMutationIsAnErrorNotACrash) {
  pickle::Writer w;
  w.empty_list();
  pickle_tensor(w, "0", DType::F32, {3, 4, 5, 6});
  w.append();
  const std::string good = w.finish();
  const std::set<std::string> allowed = {"torch._utils._rebuild_tensor_v2", "torch.FloatStorage",
                                         "collections.OrderedDict"};
  EXPECT_NO_THROW(pickle::loads(good, allowed, "t"));
  for (size_t n = 0; n < good.size(); ++n)
    EXPECT_THROW(pickle::loads(good.substr(0, n), allowed, "t"), Error) << n;
  std::mt19937 rng(7);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bad = good;
    const int flips = 1 + trial % 3;
    for (int f = 0; f < flips; ++f)
      bad[rng() % bad.size()] = static_cast<char>(rng() & 0xff);
    try {
      pickle::loads(bad, allowed, "t");
    } catch (const Error&) {
    }
  }
}

TEST(Pickle, ValueHelpers) {
  Value d;
  d.kind = K::Dict;
  Value k1, v1, v2;
  k1.kind = K::String;
  k1.s = "x";
  v1.kind = K::Int;
  v1.i = 1;
  v2.kind = K::Int;
  v2.i = 2;
  d.entries = {{k1, v1}, {k1, v2}};
  ASSERT_NE(d.get("x"), nullptr);
  EXPECT_EQ(d.get("x")->i, 2);  // the last value set wins, as in Python
  EXPECT_EQ(d.get("y"), nullptr);
  EXPECT_EQ(v1.get("x"), nullptr);
  EXPECT_EQ(d.attr("x"), nullptr);
  EXPECT_EQ(d.describe(), "dict of 2");
  EXPECT_EQ(k1.describe(), "str 'x'");
  EXPECT_EQ(v1.describe(), "int 1");
  Value none;
  EXPECT_EQ(none.describe(), "None");
}
