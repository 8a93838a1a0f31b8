#include "pipelines/pipeline_config.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <set>

#include "core/error.hpp"

namespace mb {
namespace {

using Kind = OptionSpec::Kind;

// Every problem found in one file, each with its line.
class Problems {
 public:
  explicit Problems(std::string file) : file_(std::move(file)) {}
  template <typename... Args>
  void add(const YAML::Mark& m, fmt::format_string<Args...> f, Args&&... args) {
    const int line = m.line >= 0 ? m.line + 1 : 0;
    list_.push_back(
        {line, fmt::format("{}:{}: {}", file_, line, fmt::format(f, std::forward<Args>(args)...))});
  }
  void throw_if_any() const {
    if (list_.empty()) return;
    auto sorted = list_;
    std::stable_sort(sorted.begin(), sorted.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::string msg = fmt::format("{} problem(s) in {}, nothing was run:", sorted.size(), file_);
    for (const auto& p : sorted) msg += "\n  " + p.second;
    throw Error("{}", msg);
  }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  std::vector<std::pair<int, std::string>> list_;
};

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

const char* kind_name(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "nothing";
    default:
      return "a value";
  }
}

// ${name} from `vars`, ${env:NAME} from the environment; "$${" is a literal "${".
class Expander {
 public:
  Expander(Problems& p, const EnvLookup& env) : p_(p), env_(env) {}
  void define(const std::string& name, const std::string& value) { vars_[name] = value; }
  bool has(const std::string& name) const { return vars_.count(name) > 0; }

  std::string expand(const std::string& s, const YAML::Mark& m) {
    std::string out;
    for (size_t i = 0; i < s.size();) {
      if (s.compare(i, 3, "$${") == 0) {
        out += "${";
        i += 3;
        continue;
      }
      if (s.compare(i, 2, "${") != 0) {
        out += s[i++];
        continue;
      }
      const size_t close = s.find('}', i);
      if (close == std::string::npos) {
        p_.add(m, "unterminated '${{' in '{}'", s);
        return out;
      }
      const std::string name = s.substr(i + 2, close - i - 2);
      out += lookup(name, m);
      i = close + 1;
    }
    return out;
  }

 private:
  std::string lookup(const std::string& name, const YAML::Mark& m) {
    if (name.rfind("env:", 0) == 0) {
      // ${env:NAME:-default}: the default when NAME is unset or empty.
      const auto dash = name.find(":-");
      const std::string var =
          name.substr(4, dash == std::string::npos ? std::string::npos : dash - 4);
      if (auto v = env_(var); v && !(v->empty() && dash != std::string::npos)) return *v;
      if (dash != std::string::npos) return name.substr(dash + 2);
      p_.add(m, "undefined variable '${{{}}}': {} is not set in the environment", name, var);
      return {};
    }
    if (auto it = vars_.find(name); it != vars_.end()) return it->second;
    std::vector<std::string> known;
    for (const auto& [k, v] : vars_) known.push_back(k);
    p_.add(m, "undefined variable '${{{}}}' (defined in vars: {})", name,
           known.empty() ? "none" : join(known));
    return {};
  }

  Problems& p_;
  const EnvLookup& env_;
  std::map<std::string, std::string> vars_;
};

struct Value {
  std::string text;
  YAML::Mark mark;
};

// Checks one value against its option; returns the command-line text.
std::optional<std::string> typed(const OptionSpec& o, const std::string& where, const YAML::Node& n,
                                 const std::string& v, Problems& p) {
  if (!n.IsScalar()) {
    p.add(n.Mark(), "{}: '{}' takes a single value, got {}", where, o.key, kind_name(n));
    return std::nullopt;
  }
  switch (o.kind) {
    case Kind::Flag: {
      bool b = false;
      if (!YAML::convert<bool>::decode(YAML::Node(v), b)) {
        p.add(n.Mark(), "{}: '{}' must be true or false, not '{}'", where, o.key, v);
        return std::nullopt;
      }
      return b ? "true" : "false";
    }
    case Kind::UInt:
      if (v.empty() || v.size() > 19 ||
          !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        p.add(n.Mark(), "{}: '{}' must be a whole number, not '{}'", where, o.key, v);
        return std::nullopt;
      }
      return v;
    case Kind::Number: {
      char* end = nullptr;
      std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0') {
        p.add(n.Mark(), "{}: '{}' must be a number, not '{}'", where, o.key, v);
        return std::nullopt;
      }
      return v;
    }
    case Kind::Text:
      if (!o.choices.empty() &&
          std::find(o.choices.begin(), o.choices.end(), v) == o.choices.end()) {
        p.add(n.Mark(), "{}: bad value '{}' for '{}' (expected one of: {})", where, v, o.key,
              join(o.choices));
        return std::nullopt;
      }
      return v;
  }
  return std::nullopt;
}

class StepReader {
 public:
  StepReader(const CommandSpec& c, std::string where, Expander& x, Problems& p)
      : c_(c), where_(std::move(where)), x_(x), p_(p) {}

  // Reads a mapping of keys (with nested blocks); `prefix` is "parallel." inside a block.
  void read(const YAML::Node& map, const std::string& prefix = "", const char* skip = nullptr) {
    for (const auto& kv : map) {
      const std::string key = kv.first.as<std::string>();
      if (skip && key == skip) continue;
      const std::string path = prefix + key;
      if (kv.second.IsMap() && is_block(path)) {
        read(kv.second, path + ".");
        continue;
      }
      set(path, kv.second, kv.first.Mark(), true);
    }
  }

  // A default: applied only when the command accepts it and the step does not set it.
  void set_default(const std::string& key, const YAML::Node& v, const YAML::Mark& m) {
    if (resolve(key).empty()) return;
    set(key, v, m, false);
  }

  bool accepts(const std::string& key) const { return !resolve(key).empty(); }

  PipelineStep finish(size_t index, int line) {
    PipelineStep s;
    s.index = index;
    s.command = c_.name;
    s.line = line;
    std::vector<std::string> positional;
    for (const OptionSpec& o : c_.options) {
      auto it = values_.find(o.key);
      if (it == values_.end()) continue;
      s.values.emplace_back(o.key, it->second.text);
      if (o.option.empty())
        positional.push_back(it->second.text);
      else if (o.kind != Kind::Flag)
        s.args.push_back(o.option + "=" + it->second.text);
      else if (it->second.text == "true")
        s.args.push_back(o.option);
    }
    s.args.insert(s.args.end(), positional.begin(), positional.end());
    return s;
  }

 private:
  bool is_block(const std::string& path) const {
    const std::string dot = path + ".";
    for (const auto& [a, k] : c_.aliases)
      if (a.rfind(dot, 0) == 0) return true;
    return false;
  }

  // The option a key names, and whether it is negated; empty if none.
  std::string resolve(const std::string& path, bool* negated = nullptr) const {
    std::string key = path;
    if (auto a = c_.aliases.find(path); a != c_.aliases.end()) key = a->second;
    if (auto n = c_.negated.find(key); n != c_.negated.end()) {
      if (negated) *negated = true;
      key = n->second;
    }
    if (path.find('.') != std::string::npos && key == path) return {};
    return c_.find(key) ? key : std::string();
  }

  void set(const std::string& path, const YAML::Node& node, const YAML::Mark& m, bool explicit_) {
    bool negated = false;
    const std::string key = resolve(path, &negated);
    if (key.empty()) {
      p_.add(m, "{}: unknown key '{}' (expected one of: {})", where_, path, known());
      return;
    }
    if (auto it = values_.find(key); it != values_.end()) {
      if (explicit_ && it->second.explicit_)
        p_.add(m, "{}: '{}' is set twice (also at line {})", where_, path,
               it->second.mark.line + 1);
      if (!explicit_ || it->second.explicit_) return;
    }
    const OptionSpec& o = *c_.find(key);
    const std::string raw = node.IsScalar() ? x_.expand(node.Scalar(), node.Mark()) : std::string();
    OptionSpec shown = o;
    shown.key = path;
    auto v = typed(shown, where_, node, raw, p_);
    if (!v) return;
    if (negated) *v = *v == "true" ? "false" : "true";  // strict: false sets --not-strict
    values_[key] = {*v, node.Mark(), explicit_};
  }

  std::string known() const {
    std::vector<std::string> k;
    for (const auto& o : c_.options) k.push_back(o.key);
    for (const auto& [a, v] : c_.aliases) k.push_back(a);
    for (const auto& [a, v] : c_.negated) k.push_back(a);
    std::sort(k.begin(), k.end());
    return join(k);
  }

  struct Set {
    std::string text;
    YAML::Mark mark;
    bool explicit_ = true;
  };
  const CommandSpec& c_;
  std::string where_;
  Expander& x_;
  Problems& p_;
  std::map<std::string, Set> values_;
};

YAML::Node load_yaml(const std::string& file) {
  try {
    return YAML::LoadFile(file);
  } catch (const YAML::ParserException& e) {
    throw Error("{}:{}: {}", file, e.mark.line + 1, e.msg);
  } catch (const YAML::Exception& e) {
    throw Error("{}: {}", file, e.what());
  }
}

void read_vars(const YAML::Node& vars, Expander& x, Problems& p) {
  if (!vars) return;
  if (!vars.IsMap()) {
    p.add(vars.Mark(), "'vars' must be a mapping of names to values, got {}", kind_name(vars));
    return;
  }
  for (const auto& kv : vars) {
    const std::string name = kv.first.as<std::string>();
    if (!kv.second.IsScalar()) {
      p.add(kv.second.Mark(), "vars: '{}' must be a single value, got {}", name,
            kind_name(kv.second));
      continue;
    }
    if (name.rfind("env:", 0) == 0 || name.find_first_of("${}") != std::string::npos)
      p.add(kv.first.Mark(), "vars: '{}' is not a valid variable name", name);
    x.define(name, x.expand(kv.second.Scalar(), kv.second.Mark()));
  }
}

const CommandSpec* find_command(const std::vector<CommandSpec>& cs, const std::string& name) {
  for (const auto& c : cs)
    if (c.name == name) return &c;
  return nullptr;
}

// Flattens `defaults` (nested blocks too) into (path, node, mark).
void flatten(const YAML::Node& map, const std::string& prefix,
             std::vector<std::tuple<std::string, YAML::Node, YAML::Mark>>& out) {
  for (const auto& kv : map) {
    const std::string path = prefix + kv.first.as<std::string>();
    if (kv.second.IsMap())
      flatten(kv.second, path + ".", out);
    else
      out.emplace_back(path, kv.second, kv.first.Mark());
  }
}

}  // namespace

const OptionSpec* CommandSpec::find(const std::string& key) const {
  for (const auto& o : options)
    if (o.key == key) return &o;
  return nullptr;
}

const std::string* PipelineStep::value(const std::string& key) const {
  for (const auto& [k, v] : values)
    if (k == key) return &v;
  return nullptr;
}

std::optional<std::string> process_env(const std::string& name) {
  if (const char* v = std::getenv(name.c_str())) return std::string(v);
  return std::nullopt;
}

Pipeline load_pipeline(const std::filesystem::path& path, const std::vector<CommandSpec>& commands,
                       const EnvLookup& env) {
  const std::string file = path.string();
  const YAML::Node root = load_yaml(file);
  Problems p(file);
  Expander x(p, env);
  Pipeline out;
  out.file = file;
  if (!root.IsMap())
    throw Error("{}: a pipeline is a mapping with 'steps' (and optional 'vars', 'defaults')", file);
  for (const auto& kv : root) {
    const std::string k = kv.first.as<std::string>();
    if (k != "vars" && k != "defaults" && k != "steps")
      p.add(kv.first.Mark(), "unknown key '{}' at the top level (expected vars, defaults, steps)",
            k);
  }
  read_vars(root["vars"], x, p);
  std::vector<std::tuple<std::string, YAML::Node, YAML::Mark>> defaults;
  if (const YAML::Node d = root["defaults"]) {
    if (d.IsMap())
      flatten(d, "", defaults);
    else
      p.add(d.Mark(), "'defaults' must be a mapping, got {}", kind_name(d));
  }
  const YAML::Node steps = root["steps"];
  if (!steps || !steps.IsSequence() || steps.size() == 0) {
    p.add(steps ? steps.Mark() : root.Mark(), "'steps' must be a non-empty list of steps");
    p.throw_if_any();
  }
  std::vector<bool> default_used(defaults.size(), false);
  std::vector<std::string> names;
  for (const auto& c : commands) names.push_back(c.name);
  for (size_t i = 0; i < steps.size(); ++i) {
    const YAML::Node s = steps[i];
    if (!s.IsMap() || s.size() != 1) {
      p.add(s.Mark(),
            "step {}: a step is one command name with its options, e.g. '- verify: {{a: ..., b: "
            "...}}'",
            i + 1);
      continue;
    }
    const std::string name = s.begin()->first.as<std::string>();
    const YAML::Node body = s.begin()->second;
    const CommandSpec* c = find_command(commands, name);
    if (!c) {
      p.add(s.begin()->first.Mark(), "step {}: unknown step '{}' (expected one of: {})", i + 1,
            name, join(names));
      continue;
    }
    if (!body.IsMap() && !body.IsNull()) {
      p.add(body.Mark(), "step {} ({}): its options must be a mapping, got {}", i + 1, name,
            kind_name(body));
      continue;
    }
    StepReader r(*c, fmt::format("step {} ({})", i + 1, name), x, p);
    if (body.IsMap()) r.read(body);
    for (size_t d = 0; d < defaults.size(); ++d) {
      const auto& [key, node, mark] = defaults[d];
      if (!r.accepts(key)) continue;
      default_used[d] = true;
      r.set_default(key, node, mark);
    }
    out.steps.push_back(r.finish(i + 1, s.Mark().line + 1));
  }
  for (size_t d = 0; d < defaults.size(); ++d)
    if (!default_used[d])
      p.add(std::get<2>(defaults[d]), "defaults: '{}' is an option of none of the steps",
            std::get<0>(defaults[d]));
  p.throw_if_any();
  return out;
}

PipelineStep load_single_step(const std::filesystem::path& path, const CommandSpec& command,
                              const EnvLookup& env) {
  const std::string file = path.string();
  const YAML::Node root = load_yaml(file);
  if (root.IsMap() && root["steps"]) {
    Pipeline p = load_pipeline(path, {command}, env);
    if (p.steps.size() != 1)
      throw Error(
          "{}: --config takes a single step; run a pipeline of {} steps with `megabridge run {}`",
          file, p.steps.size(), file);
    return p.steps.front();
  }
  Problems p(file);
  Expander x(p, env);
  if (!root.IsMap() && !root.IsNull()) throw Error("{}: a job file is a mapping of options", file);
  StepReader r(command, command.name, x, p);
  if (root.IsMap()) {
    read_vars(root["vars"], x, p);
    r.read(root, "", "vars");
  }
  p.throw_if_any();
  return r.finish(1, 1);
}

std::string describe_step(const PipelineStep& s, size_t steps) {
  std::string out =
      fmt::format("# [{}/{} {}] (line {})\n- {}:\n", s.index, steps, s.command, s.line, s.command);
  for (const auto& [k, v] : s.values)
    out += fmt::format("    {}: {}\n", k, YAML::Dump(YAML::Node(v)));
  return out;
}

}  // namespace mb
