package main

import (
	"sync/atomic"
	"time"
)

// Goroutines that outlive their task. A connection's work runs deep (netstack, WireGuard,
// syscalls), and a fresh goroutine gets there by growing its stack, copying it each time: on
// the connect path that was ~7% of the node's CPU. A worker keeps its grown stack and waits a
// while for the next task.

var (
	idleWorkers = make(chan func()) // unbuffered: a send succeeds only if a worker waits
	idleCount   atomic.Int64        // for the goroutine-leak checks of the tests
)

const workerIdle = 10 * time.Second

// goWork runs task on an idle worker, or on a new one.
func goWork(task func()) {
	select {
	case idleWorkers <- task:
	default:
		go worker(task)
	}
}

func worker(task func()) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		task()
		idle.Reset(workerIdle)
		idleCount.Add(1)
		select {
		case task = <-idleWorkers:
			idleCount.Add(-1)
		case <-idle.C:
			idleCount.Add(-1)
			return
		}
	}
}
