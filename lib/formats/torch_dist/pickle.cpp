// A restricted pickle reader (a small VM that builds plain values and never
// calls anything) and a protocol-2 writer. Spec megatron-checkpoint-format.md
// §2.5. The reader works on a graph of nodes addressed by index, so that memo
// references share objects exactly as Python's unpickler does (an object
// memoized while empty and filled later is seen filled by every later GET);
// the graph is turned into a Value tree once STOP is reached.
#include "formats/torch_dist/pickle.hpp"

#include <bit>
#include <charconv>
#include <cstring>
#include <limits>
#include <unordered_map>

#include <fmt/format.h>

#include "core/error.hpp"

namespace mb::pickle {

namespace {

// Opcodes (CPython Lib/pickle.py names).
enum : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I',
  BININT = 'J', BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P',
  BINPERSID = 'Q', REDUCE = 'R', STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U',
  UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a', BUILD = 'b', GLOBAL = 'c', DICT = 'd',
  EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h', INST = 'i', LONG_BINGET = 'j',
  LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
  SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  // protocol 2
  PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85,
  TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b,
  // protocol 3
  BINBYTES = 'B', SHORT_BINBYTES = 'C',
  // protocol 4
  SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, EMPTY_SET = 0x8f,
  ADDITEMS = 0x90, FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93, MEMOIZE = 0x94,
  FRAME = 0x95,
  // protocol 5
  BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98,
};

const char* op_name(uint8_t op) {
  switch (op) {
    case MARK: return "MARK";
    case STOP: return "STOP";
    case POP: return "POP";
    case POP_MARK: return "POP_MARK";
    case DUP: return "DUP";
    case FLOAT: return "FLOAT";
    case INT: return "INT";
    case BININT: return "BININT";
    case BININT1: return "BININT1";
    case LONG: return "LONG";
    case BININT2: return "BININT2";
    case NONE: return "NONE";
    case PERSID: return "PERSID";
    case BINPERSID: return "BINPERSID";
    case REDUCE: return "REDUCE";
    case STRING: return "STRING";
    case BINSTRING: return "BINSTRING";
    case SHORT_BINSTRING: return "SHORT_BINSTRING";
    case UNICODE: return "UNICODE";
    case BINUNICODE: return "BINUNICODE";
    case APPEND: return "APPEND";
    case BUILD: return "BUILD";
    case GLOBAL: return "GLOBAL";
    case DICT: return "DICT";
    case EMPTY_DICT: return "EMPTY_DICT";
    case APPENDS: return "APPENDS";
    case GET: return "GET";
    case BINGET: return "BINGET";
    case INST: return "INST";
    case LONG_BINGET: return "LONG_BINGET";
    case LIST: return "LIST";
    case EMPTY_LIST: return "EMPTY_LIST";
    case OBJ: return "OBJ";
    case PUT: return "PUT";
    case BINPUT: return "BINPUT";
    case LONG_BINPUT: return "LONG_BINPUT";
    case SETITEM: return "SETITEM";
    case TUPLE: return "TUPLE";
    case EMPTY_TUPLE: return "EMPTY_TUPLE";
    case SETITEMS: return "SETITEMS";
    case BINFLOAT: return "BINFLOAT";
    case PROTO: return "PROTO";
    case NEWOBJ: return "NEWOBJ";
    case EXT1: return "EXT1";
    case EXT2: return "EXT2";
    case EXT4: return "EXT4";
    case TUPLE1: return "TUPLE1";
    case TUPLE2: return "TUPLE2";
    case TUPLE3: return "TUPLE3";
    case NEWTRUE: return "NEWTRUE";
    case NEWFALSE: return "NEWFALSE";
    case LONG1: return "LONG1";
    case LONG4: return "LONG4";
    case BINBYTES: return "BINBYTES";
    case SHORT_BINBYTES: return "SHORT_BINBYTES";
    case SHORT_BINUNICODE: return "SHORT_BINUNICODE";
    case BINUNICODE8: return "BINUNICODE8";
    case BINBYTES8: return "BINBYTES8";
    case EMPTY_SET: return "EMPTY_SET";
    case ADDITEMS: return "ADDITEMS";
    case FROZENSET: return "FROZENSET";
    case NEWOBJ_EX: return "NEWOBJ_EX";
    case STACK_GLOBAL: return "STACK_GLOBAL";
    case MEMOIZE: return "MEMOIZE";
    case FRAME: return "FRAME";
    case BYTEARRAY8: return "BYTEARRAY8";
    case NEXT_BUFFER: return "NEXT_BUFFER";
    case READONLY_BUFFER: return "READONLY_BUFFER";
    default: return nullptr;
  }
}

std::string op_desc(uint8_t op) {
  if (const char* n = op_name(op)) return fmt::format("{} (0x{:02x})", n, op);
  return fmt::format("0x{:02x}", op);
}

constexpr size_t kNoNode = std::numeric_limits<size_t>::max();
// Deepest nesting accepted (Python's own recursion limit is 1000).
constexpr size_t kMaxDepth = 512;

// A node of the object graph the VM builds. Children are node indices, so
// that memo references share nodes as Python objects are shared.
struct Node {
  Value::Kind kind = Value::Kind::None;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::vector<size_t> items;
  std::vector<std::pair<size_t, size_t>> entries;
  size_t cls = kNoNode, args = kNoNode, state = kNoNode;
};

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Machine {
 public:
  Machine(std::string_view data, const std::set<std::string>& allowed, std::string_view what)
      : data_(data), allowed_(allowed), what_(what) {}

  Value run() {
    while (true) {
      op_pos_ = pos_;
      MB_CHECK(pos_ < data_.size(), "{}: pickle data ends at byte {} without a STOP opcode", what_,
               data_.size());
      op_ = u8();
      if (op_ == STOP) break;
      step();
    }
    const size_t result = pop();
    budget_ = 2'000'000 + 16 * static_cast<uint64_t>(data_.size());
    visiting_.assign(nodes_.size(), 0);
    return materialize(result, 0);
  }

 private:
  std::string_view data_;
  const std::set<std::string>& allowed_;
  std::string_view what_;
  size_t pos_ = 0, op_pos_ = 0;
  uint8_t op_ = 0;
  std::vector<Node> nodes_;
  std::vector<size_t> stack_;
  std::vector<size_t> marks_;  // stack sizes at each open MARK
  std::unordered_map<uint64_t, size_t> memo_;
  uint64_t budget_ = 0;
  std::vector<uint8_t> visiting_;

  [[noreturn]] void fail(const std::string& msg) const {
    throw Error("{}: {} at byte {} (opcode {})", what_, msg, op_pos_, op_desc(op_));
  }

  // --- reading the opcode stream ---
  size_t left() const { return data_.size() - pos_; }
  void need(uint64_t n) const {
    if (n > left()) fail(fmt::format("truncated pickle: needs {} more bytes, only {} left", n, left()));
  }
  const unsigned char* take(uint64_t n) {
    need(n);
    const auto* p = reinterpret_cast<const unsigned char*>(data_.data() + pos_);
    pos_ += static_cast<size_t>(n);
    return p;
  }
  uint8_t u8() { return *take(1); }
  uint64_t le(size_t n) {
    const unsigned char* p = take(n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(p[k]) << (8 * k);
    return v;
  }
  // A length field; it may not promise more bytes than remain.
  uint64_t length(size_t width) {
    const uint64_t n = le(width);
    if (n > left()) fail(fmt::format("length {} exceeds the {} bytes left", n, left()));
    return n;
  }
  std::string_view bytes(uint64_t n) {
    const unsigned char* p = take(n);
    return {reinterpret_cast<const char*>(p), static_cast<size_t>(n)};
  }
  // A text-protocol argument: the bytes up to the next newline.
  std::string_view line() {
    const size_t nl = data_.find('\n', pos_);
    if (nl == std::string_view::npos) fail("truncated pickle: missing end of line");
    std::string_view s = data_.substr(pos_, nl - pos_);
    pos_ = nl + 1;
    return s;
  }

  // --- the stack ---
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  size_t pop() {
    if (stack_.size() <= floor()) fail("stack underflow");
    const size_t v = stack_.back();
    stack_.pop_back();
    return v;
  }
  size_t top() const {
    if (stack_.size() <= floor()) fail("stack underflow");
    return stack_.back();
  }
  std::vector<size_t> pop_mark() {
    if (marks_.empty()) fail("no MARK to pop to (stack underflow)");
    const size_t k = marks_.back();
    marks_.pop_back();
    std::vector<size_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(k), stack_.end());
    stack_.resize(k);
    return items;
  }
  size_t add(Node n) {
    nodes_.push_back(std::move(n));
    return nodes_.size() - 1;
  }
  void push(Node n) { stack_.push_back(add(std::move(n))); }
  static Node scalar(Value::Kind k) {
    Node n;
    n.kind = k;
    return n;
  }
  void push_int(int64_t v) {
    Node n = scalar(Value::Kind::Int);
    n.i = v;
    push(std::move(n));
  }
  void push_bool(bool v) {
    Node n = scalar(Value::Kind::Bool);
    n.b = v;
    push(std::move(n));
  }
  void push_str(Value::Kind k, std::string s) {
    Node n = scalar(k);
    n.s = std::move(s);
    push(std::move(n));
  }
  void push_seq(Value::Kind k, std::vector<size_t> items) {
    Node n = scalar(k);
    n.items = std::move(items);
    push(std::move(n));
  }
  void push_object(size_t cls, size_t args) {
    Node n = scalar(Value::Kind::Object);
    n.cls = cls;
    n.args = args;
    push(std::move(n));
  }
  void push_global(std::string_view module, std::string_view name) {
    std::string full = fmt::format("{}.{}", module, name);
    if (!allowed_.count(full))
      throw Error("{}: refuses to load global '{}' at byte {} (only known checkpoint classes are allowed)",
                  what_, full, op_pos_);
    push_str(Value::Kind::Global, std::move(full));
  }

  // A dict (or a dict subclass instance such as OrderedDict) receiving items.
  Node& dict_target(size_t id) {
    Node& t = nodes_[id];
    if (t.kind != Value::Kind::Dict && t.kind != Value::Kind::Object)
      fail(fmt::format("cannot set items on a {}", kind_name(t.kind)));
    return t;
  }
  Node& list_target(size_t id, bool sets) {
    Node& t = nodes_[id];
    if (t.kind != Value::Kind::List && t.kind != Value::Kind::Object)
      fail(fmt::format("cannot {} a {}", sets ? "add items to" : "append to", kind_name(t.kind)));
    return t;
  }
  static const char* kind_name(Value::Kind k) {
    switch (k) {
      case Value::Kind::None: return "None";
      case Value::Kind::Bool: return "bool";
      case Value::Kind::Int: return "int";
      case Value::Kind::Float: return "float";
      case Value::Kind::String: return "str";
      case Value::Kind::Bytes: return "bytes";
      case Value::Kind::List: return "list";
      case Value::Kind::Tuple: return "tuple";
      case Value::Kind::Dict: return "dict";
      case Value::Kind::Global: return "global";
      case Value::Kind::Object: return "object";
      case Value::Kind::PersId: return "persistent id";
    }
    return "?";
  }

  int64_t text_int(std::string_view s) {
    std::string_view t = s;
    if (!t.empty() && t.back() == 'L') t.remove_suffix(1);
    if (!t.empty() && t.front() == '+') t.remove_prefix(1);
    int64_t v = 0;
    auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (ec == std::errc::result_out_of_range) fail(fmt::format("integer {} does not fit in 64 bits", s));
    if (ec != std::errc() || p != t.data() + t.size() || t.empty())
      fail(fmt::format("malformed integer '{}'", s));
    return v;
  }

  // LONG1 / LONG4 payload: little-endian two's complement.
  int64_t long_bytes(std::string_view b) {
    if (b.empty()) return 0;
    const auto* p = reinterpret_cast<const unsigned char*>(b.data());
    const size_t n = b.size();
    if (n > 8) {
      // Only sign-extension bytes may follow the low 8.
      const unsigned char ext = (p[7] & 0x80) ? 0xff : 0x00;
      for (size_t k = 8; k < n; ++k)
        if (p[k] != ext) fail(fmt::format("integer of {} bytes does not fit in 64 bits", n));
    }
    uint64_t v = 0;
    const size_t m = n < 8 ? n : 8;
    for (size_t k = 0; k < m; ++k) v |= static_cast<uint64_t>(p[k]) << (8 * k);
    if (m < 8 && (p[m - 1] & 0x80)) v |= ~uint64_t{0} << (8 * m);
    return static_cast<int64_t>(v);
  }

  // Python repr() of a byte string: quotes and backslash escapes.
  std::string unrepr(std::string_view s) {
    if (s.size() < 2 || (s.front() != '\'' && s.front() != '"') || s.back() != s.front())
      fail("STRING argument is not a quoted string");
    s = s.substr(1, s.size() - 2);
    std::string out;
    for (size_t k = 0; k < s.size(); ++k) {
      if (s[k] != '\\' || k + 1 == s.size()) {
        out += s[k];
        continue;
      }
      const char c = s[++k];
      switch (c) {
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'x': {
          const int h = k + 1 < s.size() ? hex_digit(s[k + 1]) : -1;
          const int l = k + 2 < s.size() ? hex_digit(s[k + 2]) : -1;
          if (h < 0 || l < 0) fail("bad \\x escape in STRING");
          out += static_cast<char>(h * 16 + l);
          k += 2;
          break;
        }
        default:
          if (c >= '0' && c <= '7') {
            int v = c - '0';
            for (int d = 0; d < 2 && k + 1 < s.size() && s[k + 1] >= '0' && s[k + 1] <= '7'; ++d)
              v = v * 8 + (s[++k] - '0');
            out += static_cast<char>(v & 0xff);
          } else {
            out += '\\';
            out += c;
          }
      }
    }
    return out;
  }

  // raw-unicode-escape (UNICODE opcode): latin-1 bytes with \uXXXX and \UXXXXXXXX.
  std::string raw_unicode(std::string_view s) {
    std::string out;
    for (size_t k = 0; k < s.size(); ++k) {
      const auto c = static_cast<unsigned char>(s[k]);
      if (c == '\\' && k + 1 < s.size() && (s[k + 1] == 'u' || s[k + 1] == 'U')) {
        const size_t digits = s[k + 1] == 'u' ? 4 : 8;
        if (k + 2 + digits > s.size()) fail("bad \\u escape in UNICODE");
        uint32_t cp = 0;
        for (size_t d = 0; d < digits; ++d) {
          const int h = hex_digit(s[k + 2 + d]);
          if (h < 0) fail("bad \\u escape in UNICODE");
          cp = cp * 16 + static_cast<uint32_t>(h);
        }
        if (cp > 0x10ffff) fail("bad code point in UNICODE");
        append_utf8(out, cp);
        k += 1 + digits;
      } else {
        append_utf8(out, c);
      }
    }
    return out;
  }

  void memo_put(uint64_t idx) { memo_[idx] = top(); }
  void memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) fail(fmt::format("bad memo reference {} (never stored)", idx));
    stack_.push_back(it->second);
  }

  void step() {
    switch (op_) {
      case PROTO: {
        const uint8_t v = u8();
        if (v > 5) fail(fmt::format("unsupported pickle protocol {}", v));
        break;
      }
      case FRAME: length(8); break;  // a hint for buffering: nothing to do
      case MARK: marks_.push_back(stack_.size()); break;
      case POP:
        if (stack_.size() > floor()) stack_.pop_back();
        else pop_mark();
        break;
      case POP_MARK: pop_mark(); break;
      case DUP: stack_.push_back(top()); break;

      case PUT: memo_put(static_cast<uint64_t>(text_int(line()))); break;
      case BINPUT: memo_put(u8()); break;
      case LONG_BINPUT: memo_put(le(4)); break;
      case MEMOIZE: memo_put(memo_.size()); break;
      case GET: memo_get(static_cast<uint64_t>(text_int(line()))); break;
      case BINGET: memo_get(u8()); break;
      case LONG_BINGET: memo_get(le(4)); break;

      case NONE: push(scalar(Value::Kind::None)); break;
      case NEWTRUE: push_bool(true); break;
      case NEWFALSE: push_bool(false); break;
      case INT: {
        const std::string_view s = line();
        if (s == "01") push_bool(true);
        else if (s == "00") push_bool(false);
        else push_int(text_int(s));
        break;
      }
      case LONG: push_int(text_int(line())); break;
      case BININT: push_int(static_cast<int32_t>(static_cast<uint32_t>(le(4)))); break;
      case BININT1: push_int(u8()); break;
      case BININT2: push_int(static_cast<int64_t>(le(2))); break;
      case LONG1: {
        const uint64_t n = length(1);
        push_int(long_bytes(bytes(n)));
        break;
      }
      case LONG4: {
        const auto n = static_cast<int32_t>(static_cast<uint32_t>(le(4)));
        if (n < 0) fail("negative LONG4 length");
        if (static_cast<uint64_t>(n) > left())
          fail(fmt::format("length {} exceeds the {} bytes left", n, left()));
        push_int(long_bytes(bytes(static_cast<uint64_t>(n))));
        break;
      }
      case BINFLOAT: {
        const uint64_t bits = __builtin_bswap64(le(8));  // big-endian on the wire
        Node n = scalar(Value::Kind::Float);
        n.f = std::bit_cast<double>(bits);
        push(std::move(n));
        break;
      }
      case FLOAT: {
        const std::string_view s = line();
        Node n = scalar(Value::Kind::Float);
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n.f);
        if (ec != std::errc() || p != s.data() + s.size()) fail(fmt::format("malformed float '{}'", s));
        push(std::move(n));
        break;
      }

      case STRING: push_str(Value::Kind::String, unrepr(line())); break;
      case BINSTRING: {
        const auto n = static_cast<int32_t>(static_cast<uint32_t>(le(4)));
        if (n < 0) fail("negative BINSTRING length");
        if (static_cast<uint64_t>(n) > left())
          fail(fmt::format("length {} exceeds the {} bytes left", n, left()));
        push_str(Value::Kind::String, std::string(bytes(static_cast<uint64_t>(n))));
        break;
      }
      case SHORT_BINSTRING: push_str(Value::Kind::String, std::string(bytes(length(1)))); break;
      case UNICODE: push_str(Value::Kind::String, raw_unicode(line())); break;
      case SHORT_BINUNICODE: push_str(Value::Kind::String, std::string(bytes(length(1)))); break;
      case BINUNICODE: push_str(Value::Kind::String, std::string(bytes(length(4)))); break;
      case BINUNICODE8: push_str(Value::Kind::String, std::string(bytes(length(8)))); break;
      case SHORT_BINBYTES: push_str(Value::Kind::Bytes, std::string(bytes(length(1)))); break;
      case BINBYTES: push_str(Value::Kind::Bytes, std::string(bytes(length(4)))); break;
      case BINBYTES8:
      case BYTEARRAY8: push_str(Value::Kind::Bytes, std::string(bytes(length(8)))); break;

      case EMPTY_TUPLE: push_seq(Value::Kind::Tuple, {}); break;
      case TUPLE: push_seq(Value::Kind::Tuple, pop_mark()); break;
      case TUPLE1:
      case TUPLE2:
      case TUPLE3: {
        std::vector<size_t> items(static_cast<size_t>(op_ - TUPLE1 + 1));
        for (size_t k = items.size(); k-- > 0;) items[k] = pop();
        push_seq(Value::Kind::Tuple, std::move(items));
        break;
      }
      case EMPTY_LIST: push_seq(Value::Kind::List, {}); break;
      case LIST: push_seq(Value::Kind::List, pop_mark()); break;
      case APPEND: {
        const size_t v = pop();
        list_target(top(), false).items.push_back(v);
        break;
      }
      case APPENDS: {
        std::vector<size_t> items = pop_mark();
        auto& dst = list_target(top(), false).items;
        dst.insert(dst.end(), items.begin(), items.end());
        break;
      }
      case EMPTY_SET: push_seq(Value::Kind::List, {}); break;
      case FROZENSET: push_seq(Value::Kind::List, pop_mark()); break;
      case ADDITEMS: {
        std::vector<size_t> items = pop_mark();
        auto& dst = list_target(top(), true).items;
        dst.insert(dst.end(), items.begin(), items.end());
        break;
      }
      case EMPTY_DICT: push(scalar(Value::Kind::Dict)); break;
      case DICT: {
        std::vector<size_t> items = pop_mark();
        if (items.size() % 2) fail("odd number of items for a dict");
        Node n = scalar(Value::Kind::Dict);
        for (size_t k = 0; k < items.size(); k += 2) n.entries.emplace_back(items[k], items[k + 1]);
        push(std::move(n));
        break;
      }
      case SETITEM: {
        const size_t v = pop();
        const size_t k = pop();
        dict_target(top()).entries.emplace_back(k, v);
        break;
      }
      case SETITEMS: {
        std::vector<size_t> items = pop_mark();
        if (items.size() % 2) fail("odd number of items for SETITEMS");
        Node& t = dict_target(top());
        for (size_t k = 0; k < items.size(); k += 2) t.entries.emplace_back(items[k], items[k + 1]);
        break;
      }

      case GLOBAL: {
        const std::string_view module = line();
        const std::string_view name = line();
        push_global(module, name);
        break;
      }
      case STACK_GLOBAL: {
        const size_t name = pop();
        const size_t module = pop();
        if (nodes_[name].kind != Value::Kind::String || nodes_[module].kind != Value::Kind::String)
          fail("STACK_GLOBAL needs two strings");
        push_global(nodes_[module].s, nodes_[name].s);
        break;
      }
      case INST: {
        const std::string_view module = line();
        const std::string_view name = line();
        std::vector<size_t> args = pop_mark();
        push_global(module, name);
        const size_t cls = pop();
        push_object(cls, add([&] {
                      Node t = scalar(Value::Kind::Tuple);
                      t.items = std::move(args);
                      return t;
                    }()));
        break;
      }
      case OBJ: {
        std::vector<size_t> items = pop_mark();
        if (items.empty()) fail("OBJ without a class");
        Node t = scalar(Value::Kind::Tuple);
        t.items.assign(items.begin() + 1, items.end());
        push_object(items[0], add(std::move(t)));
        break;
      }
      case REDUCE:
      case NEWOBJ: {
        const size_t args = pop();
        const size_t cls = pop();
        push_object(cls, args);
        break;
      }
      case NEWOBJ_EX: {
        const size_t kwargs = pop();
        size_t args = pop();
        const size_t cls = pop();
        const Node& kw = nodes_[kwargs];
        if (!(kw.kind == Value::Kind::Dict && kw.entries.empty())) {
          // Keep non-empty keyword arguments as a last positional item.
          Node t = scalar(Value::Kind::Tuple);
          t.items = nodes_[args].items;
          t.items.push_back(kwargs);
          args = add(std::move(t));
        }
        push_object(cls, args);
        break;
      }
      case BUILD: {
        const size_t st = pop();
        Node& t = nodes_[top()];
        if (t.kind != Value::Kind::Object) fail(fmt::format("BUILD on a {}, not an object", kind_name(t.kind)));
        if (t.state != kNoNode && nodes_[t.state].kind == Value::Kind::Dict &&
            nodes_[st].kind == Value::Kind::Dict && t.state != st) {
          // A second BUILD updates __dict__: merge into a fresh dict node.
          Node merged = nodes_[t.state];
          const auto& more = nodes_[st].entries;
          merged.entries.insert(merged.entries.end(), more.begin(), more.end());
          const size_t m = add(std::move(merged));
          nodes_[top()].state = m;  // `t` may dangle after add()
        } else {
          t.state = st;
        }
        break;
      }
      case PERSID: {
        Node s = scalar(Value::Kind::String);
        s.s = std::string(line());
        const size_t sid = add(std::move(s));
        push_seq(Value::Kind::PersId, {sid});
        break;
      }
      case BINPERSID: push_seq(Value::Kind::PersId, {pop()}); break;

      case EXT1:
      case EXT2:
      case EXT4: fail("extension registry codes are not supported");
      case NEXT_BUFFER:
      case READONLY_BUFFER: fail("out-of-band buffers are not supported");
      default:
        if (op_name(op_) == nullptr) fail("unknown opcode");
        fail("unsupported opcode");
    }
  }

  Value materialize(size_t id, size_t depth) {
    if (depth > kMaxDepth) throw Error("{}: pickle nests deeper than {} levels", what_, kMaxDepth);
    if (budget_ == 0)
      throw Error("{}: pickle expands to too many values (shared references blow it up)", what_);
    --budget_;
    if (visiting_[id]) throw Error("{}: pickle holds a recursive structure, which is not supported", what_);
    visiting_[id] = 1;
    const Node& n = nodes_[id];
    Value v;
    v.kind = n.kind;
    v.b = n.b;
    v.i = n.i;
    v.f = n.f;
    v.s = n.s;
    v.items.reserve(n.items.size());
    for (size_t c : n.items) v.items.push_back(materialize(c, depth + 1));
    v.entries.reserve(n.entries.size());
    for (const auto& [k, x] : n.entries) {
      Value kv = materialize(k, depth + 1);
      v.entries.emplace_back(std::move(kv), materialize(x, depth + 1));
    }
    if (n.kind == Value::Kind::Object) {
      v.cls = std::make_shared<Value>(materialize(n.cls, depth + 1));
      v.args = std::make_shared<Value>(materialize(n.args, depth + 1));
      v.state = std::make_shared<Value>(n.state == kNoNode ? Value{} : materialize(n.state, depth + 1));
    }
    visiting_[id] = 0;
    return v;
  }
};

}  // namespace

Value::Value() = default;
Value::Value(const Value&) = default;
Value::Value(Value&&) noexcept = default;
Value& Value::operator=(const Value&) = default;
Value& Value::operator=(Value&&) noexcept = default;
Value::~Value() = default;

const Value* Value::get(std::string_view key) const {
  if (kind != Kind::Dict && kind != Kind::Object) return nullptr;
  // Python dicts keep the last value set for a key.
  for (auto it = entries.rbegin(); it != entries.rend(); ++it)
    if (it->first.kind == Kind::String && it->first.s == key) return &it->second;
  return nullptr;
}

const Value* Value::attr(std::string_view key) const {
  if (kind != Kind::Object || !state) return nullptr;
  if (state->kind == Kind::Dict) return state->get(key);
  // (dict, slots) state as BUILD accepts it.
  if (state->kind == Kind::Tuple && state->items.size() == 2) {
    for (const Value& part : state->items)
      if (part.kind == Kind::Dict)
        if (const Value* v = part.get(key)) return v;
  }
  return nullptr;
}

std::string Value::describe() const {
  auto clip = [](const std::string& t) { return t.size() > 60 ? t.substr(0, 57) + "..." : t; };
  switch (kind) {
    case Kind::None: return "None";
    case Kind::Bool: return b ? "True" : "False";
    case Kind::Int: return fmt::format("int {}", i);
    case Kind::Float: return fmt::format("float {}", f);
    case Kind::String: return fmt::format("str '{}'", clip(s));
    case Kind::Bytes: return fmt::format("bytes of length {}", s.size());
    case Kind::List: return fmt::format("list of {}", items.size());
    case Kind::Tuple: return fmt::format("tuple of {}", items.size());
    case Kind::Dict: return fmt::format("dict of {}", entries.size());
    case Kind::Global: return fmt::format("global {}", s);
    case Kind::Object:
      return fmt::format("{} object", cls && cls->kind == Kind::Global ? cls->s : std::string("an"));
    case Kind::PersId: return "persistent id";
  }
  return "?";
}

Value loads(std::string_view data, const std::set<std::string>& allowed, std::string_view what) {
  return Machine(data, allowed, what).run();
}

// --- Writer ---------------------------------------------------------------

Writer::Writer() { out_ = "\x80\x02"; }

void Writer::none() { out_ += 'N'; }
void Writer::boolean(bool v) { out_ += static_cast<char>(v ? NEWTRUE : NEWFALSE); }

void Writer::integer(int64_t v) {
  auto put_le = [&](uint64_t x, size_t n) {
    for (size_t k = 0; k < n; ++k) out_ += static_cast<char>((x >> (8 * k)) & 0xff);
  };
  if (v >= 0 && v <= 0xff) {
    out_ += static_cast<char>(BININT1);
    put_le(static_cast<uint64_t>(v), 1);
  } else if (v >= 0 && v <= 0xffff) {
    out_ += static_cast<char>(BININT2);
    put_le(static_cast<uint64_t>(v), 2);
  } else if (v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max()) {
    out_ += static_cast<char>(BININT);
    put_le(static_cast<uint64_t>(v), 4);
  } else {
    // LONG1: the shortest little-endian two's complement.
    const auto u = static_cast<uint64_t>(v);
    size_t n = 8;
    while (n > 1) {
      const auto last = static_cast<uint8_t>(u >> (8 * (n - 1)));
      const auto below = static_cast<uint8_t>(u >> (8 * (n - 2)));
      if ((last == 0x00 && !(below & 0x80)) || (last == 0xff && (below & 0x80))) --n;
      else break;
    }
    out_ += static_cast<char>(LONG1);
    out_ += static_cast<char>(n);
    put_le(u, n);
  }
}

void Writer::floating(double v) {
  out_ += static_cast<char>(BINFLOAT);
  const uint64_t bits = std::bit_cast<uint64_t>(v);
  for (int k = 7; k >= 0; --k) out_ += static_cast<char>((bits >> (8 * k)) & 0xff);
}

void Writer::string(std::string_view v) {
  MB_CHECK(v.size() <= 0xffffffffu, "pickle: string of {} bytes is too long for BINUNICODE", v.size());
  out_ += static_cast<char>(BINUNICODE);
  const auto n = static_cast<uint32_t>(v.size());
  for (int k = 0; k < 4; ++k) out_ += static_cast<char>((n >> (8 * k)) & 0xff);
  out_ += v;
}

void Writer::global(std::string_view module, std::string_view name) {
  out_ += static_cast<char>(GLOBAL);
  out_ += module;
  out_ += '\n';
  out_ += name;
  out_ += '\n';
}

void Writer::mark() { out_ += static_cast<char>(MARK); }
void Writer::tuple_from_mark() { out_ += static_cast<char>(TUPLE); }
void Writer::empty_tuple() { out_ += static_cast<char>(EMPTY_TUPLE); }
void Writer::tuple1() { out_ += static_cast<char>(TUPLE1); }
void Writer::tuple2() { out_ += static_cast<char>(TUPLE2); }
void Writer::tuple3() { out_ += static_cast<char>(TUPLE3); }
void Writer::empty_list() { out_ += static_cast<char>(EMPTY_LIST); }
void Writer::append() { out_ += static_cast<char>(APPEND); }
void Writer::appends() { out_ += static_cast<char>(APPENDS); }
void Writer::empty_dict() { out_ += static_cast<char>(EMPTY_DICT); }
void Writer::setitem() { out_ += static_cast<char>(SETITEM); }
void Writer::setitems() { out_ += static_cast<char>(SETITEMS); }
void Writer::reduce() { out_ += static_cast<char>(REDUCE); }
void Writer::newobj() { out_ += static_cast<char>(NEWOBJ); }
void Writer::build() { out_ += static_cast<char>(BUILD); }
void Writer::binpersid() { out_ += static_cast<char>(BINPERSID); }

void Writer::int_tuple(const std::vector<uint64_t>& v) {
  if (v.empty()) {
    empty_tuple();
    return;
  }
  const bool marked = v.size() > 3;
  if (marked) mark();
  for (uint64_t x : v) {
    MB_CHECK(x <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
             "pickle: {} does not fit in a 64-bit signed integer", x);
    integer(static_cast<int64_t>(x));
  }
  if (marked) tuple_from_mark();
  else if (v.size() == 1) tuple1();
  else if (v.size() == 2) tuple2();
  else tuple3();
}

void Writer::torch_size(const std::vector<uint64_t>& dims) {
  global("torch", "Size");
  int_tuple(dims);
  tuple1();
  reduce();
}

std::string Writer::finish() {
  out_ += static_cast<char>(STOP);
  return std::move(out_);
}

}  // namespace mb::pickle
