/** Example programs that show what the platform does with well- and badly-behaved code. */
import type { Language, Limits } from '../api/models';

export interface Template {
  id: string;
  name: string;
  description: string;
  language: Language;
  code: string;
  limits?: Partial<Limits>;
  stdin?: string;
  expected_output?: string;
  /** The verdict badge the UI should show (used by the end-to-end tests). */
  expect: string;
}

export const STARTERS: Record<Language, string> = {
  python: 'print("Hello, world!")\n',
  javascript: 'console.log("Hello, world!");\n',
  bash: 'echo "Hello, world!"\n',
  c: '#include <stdio.h>\n\nint main(void) {\n    printf("Hello, world!\\n");\n    return 0;\n}\n',
  cpp: '#include <iostream>\n\nint main() {\n    std::cout << "Hello, world!" << std::endl;\n    return 0;\n}\n',
  java: 'public class Main {\n    public static void main(String[] args) {\n        System.out.println("Hello, world!");\n    }\n}\n',
};

export const TEMPLATES: Template[] = [
  {
    id: 'hello',
    name: 'Hello world',
    description: 'Prints a line and exits 0, checked against an expected output.',
    language: 'python',
    code: STARTERS.python,
    expected_output: 'Hello, world!\n',
    expect: 'Exited 0',
  },
  {
    id: 'cpu-spin',
    name: 'CPU spin',
    description: 'An endless busy loop; stopped at the CPU-time limit.',
    language: 'python',
    code: '# Spins forever; the CPU-time limit stops it.\nn = 0\nwhile True:\n    n += 1\n',
    limits: { cpu_s: 2, timeout_s: 5 },
    expect: 'CPU limit|Timeout',
  },
  {
    id: 'memory-bomb',
    name: 'Memory bomb',
    description: 'Allocates memory without end; the kernel stops it at the memory limit.',
    language: 'python',
    code:
      '# Grabs 16 MB at a time until the memory limit stops it.\nblocks = []\nwhile True:\n    blocks.append(bytearray(16 * 1024 * 1024))\n    print(f"holding {len(blocks) * 16} MB", flush=True)\n',
    limits: { memory_mb: 128 },
    expect: 'Memory limit',
  },
  {
    id: 'fork-bomb',
    name: 'Fork bomb',
    description: 'Forks until refused; the pids limit contains it.',
    language: 'python',
    code:
      '# Every process keeps forking; the pids limit caps the explosion.\nimport os, time\n\nchildren = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n        children += 1\nexcept OSError as e:\n    print(f"fork refused after {children} children: {e}")\n',
    limits: { pids: 32, timeout_s: 10 },
    expect: 'Exited 0',
  },
  {
    id: 'network',
    name: 'Network attempt',
    description: 'Tries to open a TCP connection; the sandbox has no network.',
    language: 'python',
    code:
      '# The sandbox has its own network namespace: the host\'s services on\n# 127.0.0.1 (PostgreSQL 5432, Redis 6379, this server 8000) are out of reach,\n# and so is DNS.\nimport socket, sys\n\nreached = []\nfor port in (5432, 6379, 8000):\n    try:\n        socket.create_connection(("127.0.0.1", port), timeout=3)\n        reached.append(port)\n    except OSError as e:\n        print(f"127.0.0.1:{port}: network blocked: {e}")\ntry:\n    socket.getaddrinfo("example.com", 80)\n    reached.append("dns")\nexcept OSError as e:\n    print(f"dns: network blocked: {e}")\nif reached:\n    print("reached:", reached)\n    sys.exit(1)\n',
    expect: 'Exited 0',
  },
  {
    id: 'huge-output',
    name: 'Huge output',
    description: 'Prints without end; stopped at the output limit.',
    language: 'python',
    code: '# Floods stdout; the output limit stops it.\nimport sys\nline = "x" * 99 + "\\n"\nwhile True:\n    sys.stdout.write(line)\n',
    limits: { output_bytes: 65536 },
    expect: 'Output limit',
  },
  {
    id: 'escape',
    name: 'Write outside the workspace',
    description: 'Tries to write system paths (refused) and leaves one file in /workspace.',
    language: 'bash',
    code:
      '# Everything but /workspace and /tmp is read-only.\nfor path in /etc/passwd /usr/bin/evil /root/evil /evil; do\n  if echo pwned > "$path" 2>/dev/null; then\n    echo "WROTE $path"\n  else\n    echo "refused: $path"\n  fi\ndone\necho "kept inside the sandbox" > /workspace/result.txt\necho "wrote /workspace/result.txt"\n',
    expect: 'Exited 0',
  },
  {
    id: 'runtime-error',
    name: 'Runtime error',
    description: 'Raises an uncaught exception: exits with code 1 and a traceback.',
    language: 'python',
    code: 'def mean(xs):\n    return sum(xs) / len(xs)\n\nprint(mean([]))\n',
    expect: 'Exited 1',
  },
  {
    id: 'segfault',
    name: 'Segmentation fault',
    description: 'A C program that dereferences NULL: killed by SIGSEGV.',
    language: 'c',
    code: '#include <stdio.h>\n\nint main(void) {\n    int *p = NULL;\n    printf("about to crash\\n");\n    fflush(stdout);\n    return *p;\n}\n',
    expect: 'SIGSEGV',
  },
  {
    id: 'syntax-error',
    name: 'Syntax error',
    description: 'A C program the compiler rejects: a compile error.',
    language: 'c',
    code: '#include <stdio.h>\n\nint main(void) {\n    printf("missing semicolon\\n")\n    return 0;\n}\n',
    expect: 'Compile error',
  },
  {
    id: 'progress',
    name: 'Long-running with progress',
    description: 'Prints progress every half second for about 10 seconds; watch it stream.',
    language: 'python',
    code:
      '# Streams progress; try Cancel while it runs.\nimport time\n\nsteps = 20\nfor i in range(1, steps + 1):\n    print(f"step {i}/{steps}", flush=True)\n    time.sleep(0.5)\nprint("done")\n',
    limits: { timeout_s: 30 },
    expect: 'Exited 0',
  },
];

export function templateById(id: string): Template | undefined {
  return TEMPLATES.find((t) => t.id === id);
}
