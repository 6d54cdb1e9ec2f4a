package uml

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/proxymodes/proxymodes/harness/agent"
)

// launchRole is this binary re-executed to start linux.uml under the
// seccomp filter (see the package comment). Go cannot run code between
// fork and exec, so a helper installs the filter and then execs.
const launchRole = "uml-launch"

func init() { agent.Register(launchRole, launchMain) }

// Guest programs must not use AVX: UML saves only their FXSAVE state.
var guestEnv = []string{
	"GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX_Fast_Unaligned_Load",
	"GODEBUG=cpu.all=off",
}

func launchMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "uml-launch: missing program")
		return 2
	}
	runtime.LockOSThread()
	if err := hideXstate(); err != nil {
		fmt.Fprintln(os.Stderr, "uml-launch: seccomp:", err)
		return 1
	}
	err := syscall.Exec(args[0], args, os.Environ())
	fmt.Fprintln(os.Stderr, "uml-launch: exec:", err)
	return 1
}

// hideXstate installs a filter under which ptrace(PTRACE_GETREGSET, pid,
// NT_X86_XSTATE, ...) fails with EIO; every other call is allowed.
func hideXstate() error {
	const (
		ptraceGetRegset = 0x4204
		ntX86Xstate     = 0x202
		offArch         = 4
		offNr           = 0
		offArg0         = 16 // seccomp_data.args[0], low word on amd64
		offArg2         = 32
	)
	ld := func(off uint32) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: off}
	}
	jeq := func(v uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: jt, Jf: jf, K: v}
	}
	// Jumps count instructions skipped: index 8 allows, index 9 denies.
	prog := []unix.SockFilter{
		/* 0 */ ld(offArch) /* 1 */, jeq(unix.AUDIT_ARCH_X86_64, 0, 6),
		/* 2 */ ld(offNr) /* 3 */, jeq(unix.SYS_PTRACE, 0, 4),
		/* 4 */ ld(offArg0) /* 5 */, jeq(ptraceGetRegset, 0, 2),
		/* 6 */ ld(offArg2) /* 7 */, jeq(ntX86Xstate, 1, 0),
		/* 8 */ {Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
		/* 9 */ {Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EIO)},
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		return e
	}
	return nil
}
