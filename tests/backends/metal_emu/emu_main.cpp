// The emulator's command-line runner.
//   runner --list             kernels and their parameters
//   runner MANIFEST           one dispatch, described by MANIFEST (written by emu.py):
//     kernel NAME
//     threads X Y Z
//     group X Y Z
//     storage ID PATH NBYTES                 a tensor's storage, read from and written back to PATH
//     arg tensor STORAGE_ID BYTE_OFFSET DTYPE  (compile_shader: device buffer at the tensor's offset)
//     arg long VALUE                          (compile_shader: a Python int -> constant long&)
//     arg float HEX                           (compile_shader: a Python float -> constant float&)
//     arg longs N V1 .. VN                    (compile_shader: a list of ints -> constant long*)
//     arg floats N HEX1 .. HEXN               (compile_shader: a list of floats -> constant float*)
// Storages carry a guard zone; a kernel that writes past a buffer's end is reported.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "emu_runtime.h"

namespace {

constexpr std::size_t kGuard = 4096;
constexpr unsigned char kGuardByte = 0xA5;

struct Storage {
  std::string path;
  std::size_t size = 0;
  std::vector<unsigned char> mem;  // size + kGuard bytes
};

int list() {
  for (const emu::KernelInfo* k : emu::all_kernels()) {
    std::printf("%s", k->name);
    for (const auto& p : k->params)
      std::printf(" %s:%s:%s:%s:%s", p.name, p.kind == emu::ArgKind::Pointer ? "ptr" : "ref", p.space,
                  p.type, p.writable ? "w" : "r");
    std::printf("\n");
  }
  return 0;
}

[[noreturn]] void die(const std::string& why) { emu::fail(why); }

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--list") return list();
  if (argc != 2) die("usage: runner --list | runner MANIFEST");
  std::ifstream in(argv[1]);
  if (!in) die(std::string("cannot open manifest ") + argv[1]);

  std::string kernel_name;
  emu::U3 threads{1, 1, 1}, group{1, 1, 1};
  std::map<int, Storage> storages;
  struct Arg {
    std::string kind, dtype;
    int storage = -1;
    std::size_t offset = 0;
    std::vector<long> longs;
    std::vector<float> floats;
  };
  std::vector<Arg> args;

  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string key;
    if (!(ls >> key)) continue;
    if (key == "kernel") {
      ls >> kernel_name;
    } else if (key == "threads") {
      ls >> threads.x >> threads.y >> threads.z;
    } else if (key == "group") {
      ls >> group.x >> group.y >> group.z;
    } else if (key == "storage") {
      int id;
      Storage s;
      ls >> id >> s.path >> s.size;
      s.mem.assign(s.size + kGuard, kGuardByte);
      std::ifstream f(s.path, std::ios::binary);
      if (!f.read(reinterpret_cast<char*>(s.mem.data()), std::streamsize(s.size)))
        die("cannot read storage file " + s.path);
      storages[id] = std::move(s);
    } else if (key == "arg") {
      Arg a;
      ls >> a.kind;
      if (a.kind == "tensor") {
        ls >> a.storage >> a.offset >> a.dtype;
      } else if (a.kind == "long") {
        long v;
        ls >> v;
        a.longs = {v};
      } else if (a.kind == "float") {
        std::string hex;
        ls >> hex;
        a.floats = {float(std::strtod(hex.c_str(), nullptr))};
      } else if (a.kind == "longs" || a.kind == "floats") {
        std::size_t n;
        ls >> n;
        for (std::size_t i = 0; i < n; ++i) {
          std::string v;
          ls >> v;
          if (a.kind == "longs") a.longs.push_back(std::stol(v));
          else a.floats.push_back(float(std::strtod(v.c_str(), nullptr)));
        }
      } else {
        die("unknown argument kind " + a.kind);
      }
      args.push_back(std::move(a));
    } else {
      die("unknown manifest line: " + line);
    }
  }

  const emu::KernelInfo* k = emu::find_kernel(kernel_name);
  if (!k) die("no kernel named " + kernel_name + " (as getattr on the compiled library would fail)");
  if (args.size() != k->params.size())
    die(kernel_name + " takes " + std::to_string(k->params.size()) + " arguments, got " +
        std::to_string(args.size()));

  // Bind as compile_shader does, refusing what would silently misbind on a GPU.
  std::vector<void*> ptrs(args.size());
  for (std::size_t i = 0; i < args.size(); ++i) {
    Arg& a = args[i];
    const emu::ParamInfo& p = k->params[i];
    const std::string where = kernel_name + " argument " + std::to_string(i) + " (" + p.name + ")";
    if (a.kind == "tensor") {
      if (p.kind != emu::ArgKind::Pointer || std::string(p.space) != "device")
        die(where + ": a tensor binds to a device pointer, the kernel declares " + p.space + " " + p.type);
      if (a.dtype != p.type) die(where + ": tensor of " + a.dtype + " bound to device " + p.type + "*");
      Storage& s = storages.at(a.storage);
      if (a.offset > s.size) die(where + ": offset past the storage");
      ptrs[i] = s.mem.data() + a.offset;
    } else if (a.kind == "long" || a.kind == "float") {
      const char* want = a.kind == "long" ? "long" : "float";
      if (p.kind != emu::ArgKind::Reference || std::string(p.type) != want)
        die(where + ": a Python " + (a.kind == "long" ? "int" : "float") + " binds as constant " + want +
            "&, the kernel declares " + p.space + " " + p.type);
      ptrs[i] = a.kind == "long" ? static_cast<void*>(a.longs.data()) : static_cast<void*>(a.floats.data());
    } else {
      const char* want = a.kind == "longs" ? "long" : "float";
      if (p.kind != emu::ArgKind::Pointer || std::string(p.space) != "constant" || std::string(p.type) != want)
        die(where + ": a list binds as constant " + want + "*, the kernel declares " + p.space + " " + p.type);
      ptrs[i] = a.kind == "longs" ? static_cast<void*>(a.longs.data()) : static_cast<void*>(a.floats.data());
    }
  }

  std::string err = emu::dispatch(*k, ptrs.data(), threads, group);
  if (!err.empty()) die(kernel_name + ": " + err);

  for (auto& [id, s] : storages) {
    for (std::size_t i = s.size; i < s.size + kGuard; ++i)
      if (s.mem[i] != kGuardByte) die(kernel_name + " wrote past the end of storage " + std::to_string(id));
    std::ofstream f(s.path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(s.mem.data()), std::streamsize(s.size));
    if (!f) die("cannot write storage file " + s.path);
  }
  return 0;
}
