"""Rewrites a .cu or .cuh file of csrc/cuda for tools/cuda_emu (see README.md).
Usage: translate.py IN OUT

- `kernel<<<grid, block[, shmem[, stream]]>>>(args)` becomes
  `emu_launch("kernel", grid, block, [&] { kernel(args); })`. The launch runs at once, so
  the stream only orders it after the work already done; a shared-memory size other
  than a literal 0 (dynamic shared memory) is not modelled and is refused.
- `__shared__ T name[dims];` becomes a reference to an array of the emulator's per-block
  shared arena (`emu::shared`), which starts each block as 0xFF bytes. Any other use of
  `__shared__` (extern, scalars) is refused rather than silently mistranslated.
Line numbers are kept (a `#line` directive names the source, and a rewritten launch
keeps its newlines), so sanitizer and emulator reports point into csrc/cuda."""
import os
import re
import sys


def fail(path, src, pos, why):
    line = src.count('\n', 0, pos) + 1
    sys.exit(f'{path}:{line}: translate.py: {why}')


def split_top(text):
    """Splits text at the commas outside parentheses, brackets and angle brackets."""
    parts, depth, cur = [], 0, ''
    for ch in text:
        if ch in '([<':
            depth += 1
        elif ch in ')]>':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur.strip())
            cur = ''
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


def launches(path, src):
    out, i = [], 0
    while True:
        j = src.find('<<<', i)
        if j < 0:
            out.append(src[i:])
            return ''.join(out)
        # kernel name: walk back over identifier chars and template args
        k, depth = j, 0
        while k > 0:
            ch = src[k - 1]
            if ch == '>':
                depth += 1
            elif ch == '<':
                depth -= 1
            elif depth == 0 and not (ch.isalnum() or ch in '_:'):
                break
            k -= 1
        name = src[k:j]
        e = src.find('>>>', j)
        cfg = split_top(src[j + 3:e])
        if not 2 <= len(cfg) <= 4:
            fail(path, src, j, f'launch of {name} with {len(cfg)} configuration arguments')
        if len(cfg) >= 3 and cfg[2] != '0':
            fail(path, src, j, f'launch of {name} asks for {cfg[2]} bytes of dynamic shared '
                 'memory, which the emulator does not model')
        if src[e + 3] != '(':
            fail(path, src, e, 'launch without an argument list')
        d, m = 0, e + 3
        while True:
            if src[m] == '(':
                d += 1
            elif src[m] == ')':
                d -= 1
                if d == 0:
                    break
            m += 1
        args = src[e + 4:m]
        out.append(src[i:k])
        out.append(f'emu_launch("{name}", {cfg[0]}, {cfg[1]}, [&] {{ {name}({args}); }})')
        out.append('\n' * src.count('\n', k, m + 1))
        i = m + 1


SHARED = re.compile(r'__shared__\s+(?P<type>[A-Za-z_][\w:<>, ]*?)\s+(?P<name>[A-Za-z_]\w*)\s*'
                    r'(?P<dims>(?:\[[^\]\n]+\]\s*)+);')


def shared(path, src):
    def repl(m):
        t, name, dims = m['type'], m['name'], re.sub(r'\s+', '', m['dims'])
        return (f'static ::emu::SharedSlot emu_slot_{name}; '
                f'auto& {name} = ::emu::shared<{t}{dims}>(emu_slot_{name}, "{name}", __LINE__);')
    out = SHARED.sub(repl, src)
    for m in re.finditer(r'__shared__', out):
        line_start = out.rfind('\n', 0, m.start()) + 1
        if '//' not in out[line_start:m.start()]:
            fail(path, out, m.start(), 'a __shared__ declaration the emulator does not model '
                 '(only `__shared__ T name[N]...;` is)')
    return out


def main():
    path, dst = sys.argv[1], sys.argv[2]
    src = open(path).read()
    text = shared(path, launches(path, src))
    with open(dst, 'w') as f:
        f.write(f'#line 1 "{os.path.abspath(path)}"\n' + text)


if __name__ == '__main__':
    main()
