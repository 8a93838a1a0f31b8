// Python pickles, as PyTorch and Megatron-Core write them: a protocol-2
// writer for the files we produce (.metadata, torch.save's data.pkl) and a
// restricted reader that builds plain values and never runs code.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mb::pickle {

// A decoded pickle value. Class instances are kept as data: the class (a
// global), the constructor arguments and the state passed to BUILD.
// Sets and frozensets decode as List. Text STRING/BINSTRING decode as String.
struct Value {
  enum class Kind { None, Bool, Int, Float, String, Bytes, List, Tuple, Dict, Global, Object, PersId };
  Kind kind = Kind::None;
  bool b = false;
  int64_t i = 0;           // Int (values beyond int64 are an error naming the file)
  double f = 0;            // Float
  std::string s;           // String, Bytes; Global: "module.name"
  std::vector<Value> items;                       // List, Tuple; PersId: its tuple as items[0]
  std::vector<std::pair<Value, Value>> entries;   // Dict, in insertion order (keys any Value)
  // Object: cls is a Global; args the NEWOBJ/REDUCE arguments (a Tuple); state
  // what BUILD set (a None Value when there was no BUILD). For an Object the
  // three pointers are never null; for other kinds they are null. Instances of
  // dict / list subclasses (OrderedDict(...) followed by SETITEMS) also keep
  // the items set on them, in `entries` / `items`.
  std::shared_ptr<Value> cls, args, state;

  // Declared here and defaulted in pickle.cpp: `entries` holds pairs of the
  // type being defined, and clang with libstdc++ cannot instantiate
  // std::pair<Value, Value> while it works out implicit special members.
  Value();
  Value(const Value&);
  Value(Value&&) noexcept;
  Value& operator=(const Value&);
  Value& operator=(Value&&) noexcept;
  ~Value();

  bool is(Kind k) const { return kind == k; }
  // Dict lookup by string key (the last one set wins, as in Python); nullptr if
  // absent or not a dict (or dict-subclass Object).
  const Value* get(std::string_view key) const;
  // For an Object built with a dict state (a dataclass), the attribute
  // (also for a (dict, slots) state); nullptr if absent.
  const Value* attr(std::string_view key) const;
  std::string describe() const;  // short, for error messages
};

// Reads a pickle (protocols 0-5 opcodes that PyTorch and CPython emit).
// Memo references share objects as in Python (an object filled after it was
// memoized is seen filled by later GETs); recursive structures, nesting
// deeper than 512 and shared references that expand the tree beyond about
// 2M + 16 x input-size values are refused.
// Every GLOBAL / STACK_GLOBAL must be in `allowed` ("module.name"); anything
// else, and any malformed or truncated input, is an Error naming `what`, the
// byte offset and the offending opcode or global. Nothing is executed:
// REDUCE, NEWOBJ and BUILD only record their operands.
Value loads(std::string_view data, const std::set<std::string>& allowed, std::string_view what);

// Builds a protocol-2 pickle. Values are emitted in the order the calls are
// made, like CPython's pickler walking an object; no memo is used.
class Writer {
 public:
  Writer();  // emits PROTO 2

  void none();
  void boolean(bool v);
  void integer(int64_t v);  // BININT1/BININT2/BININT/LONG1 as CPython chooses
  void floating(double v);  // BINFLOAT (big-endian)
  void string(std::string_view v);  // BINUNICODE
  void global(std::string_view module, std::string_view name);  // GLOBAL
  void mark();
  void tuple_from_mark();   // TUPLE
  void empty_tuple();
  void tuple1();
  void tuple2();
  void tuple3();
  void empty_list();
  void append();            // APPEND (one item)
  void appends();           // APPENDS (items since mark)
  void empty_dict();
  void setitem();           // SETITEM (one pair)
  void setitems();          // SETITEMS (pairs since mark)
  void reduce();            // REDUCE
  void newobj();            // NEWOBJ
  void build();             // BUILD
  void binpersid();         // BINPERSID
  // Convenience: a tuple of ints as CPython writes it: EMPTY_TUPLE,
  // TUPLE1/2/3 for up to three items, MARK ... TUPLE beyond.
  void int_tuple(const std::vector<uint64_t>& v);
  // Convenience: torch.Size((d0, d1, ...)).
  void torch_size(const std::vector<uint64_t>& dims);

  // Appends STOP and returns the bytes.
  std::string finish();

 private:
  std::string out_;
};

}  // namespace mb::pickle
