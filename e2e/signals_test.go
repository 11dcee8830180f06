package e2e

import (
	"os"
	"syscall"
)

var readFile = os.ReadFile

var (
	sigStop = syscall.SIGSTOP
	sigCont = syscall.SIGCONT
)
