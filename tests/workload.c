/*
 * Copyright (c) 2026 The kernel_delay authors
 *
 * Licensed under the Apache License, Version 2.0 (the "License");
 * you may not use this file except in compliance with the License.
 * You may obtain a copy of the License at
 *
 *     http://www.apache.org/licenses/LICENSE-2.0
 *
 * Unless required by applicable law or agreed to in writing, software
 * distributed under the License is distributed on an "AS IS" BASIS,
 * WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 * See the License for the specific language governing permissions and
 * limitations under the License.
 */

/*
 * Test workload for kernel_delay.py: a process with named threads whose
 * behaviour is known, driven by one-line commands on stdin.
 *
 * Build: gcc -O2 -g -fno-omit-frame-pointer -pthread -Wall -Wextra \
 *        -o workload workload.c
 * (frame pointers: the tests check user stacks, which bcc walks with them)
 * Usage: workload [--spin CPU]
 *
 * Commands (one answer line each):
 *   ping       -> pong
 *   tids       -> tids kd-main=TID kd-sleep=TID ...
 *   burst N    -> ok burst N    (kd-burst did N getsid() syscalls)
 *   udp N      -> ok udp N      (kd-udp sent/received N datagrams)
 *   nap N      -> ok nap N      (kd-nap slept N times NAP_MS ms, one
 *                 clock_nanosleep syscall each, from nap_thread())
 *   short N    -> ok short N TID (a new thread kd-short did N getpgid()
 *                 syscalls and exited)
 *   getppid N  -> ok getppid N NS  (kd-main made N getppid() syscalls in
 *                 NS ns, CLOCK_MONOTONIC)
 *   pingpong N CPU -> ok pingpong N NS  (two new threads kd-ping and
 *                 kd-pong, pinned to CPU, did N round trips of one byte
 *                 over two pipes in NS ns; both then exit)
 *   crowd N    -> ok crowd N  (N more threads kd-cNNNNN, each making 12
 *                 distinct system calls every 250 ms until the end)
 *   crowd N MS -> ok crowd N  (the same, but each round ends in a poll()
 *                 of MS ms: with MS 10 and N 2,000 it saturates 2 CPUs)
 *   ops N      -> ok ops N  (kd-main called kd_op(0) N times: its USDT
 *                 probes op_start and op_end fired N times each, microseconds
 *                 apart)
 *   rename HEX -> ok rename     (kd-main renames itself to the bytes HEX)
 *   shortname HEX N -> ok shortname N TID (as short, but the thread is
 *                 named with the bytes HEX)
 *   tname NAME HEX -> ok tname TID  (the live thread NAME, as tids lists
 *                 it, is renamed to the bytes HEX through its comm file)
 *   leaderexit -> ok leaderexit TID  (kd-main calls pthread_exit(): the
 *                 leader is a zombie while the others run; commands are
 *                 then read by a new thread, TID)
 *   reuse      -> ok reuse TID  (a thread kd-short exited, then a new
 *                 thread kd-reuse got the same TID, through
 *                 /proc/sys/kernel/ns_last_pid, and exited; root only)
 *   exec       -> ok exec TID  (a new thread, not the leader, runs
 *                 execve() of this program with --exec-child: the process
 *                 keeps its PID, and only that thread remains, with the
 *                 leader's TID; it answers the next line with "bye" and
 *                 exits)
 *   lpoll CPU  -> ok lpoll TID  (a new thread kd-lpoll, pinned to CPU,
 *                 or not pinned with -1, polls in a loop with 1 ms
 *                 timeouts: the intervals between its polls are short)
 *   lpgap US   -> ok lpgap START END  (kd-lpoll made one interval of a
 *                 busy loop of US microseconds; START and END: its
 *                 CLOCK_MONOTONIC ns after that poll() and before the next)
 *   lplong BUSY_MS SLEEP_MS -> ok lplong TID  (kd-lpoll began one long
 *                 interval: a busy loop of BUSY_MS ms, one nanosleep of
 *                 SLEEP_MS ms, and now spins until lpend: stop it now)
 *   lpend      -> ok lpend START END RUN WAIT LATE  (the long interval ended;
 *                 RUN and WAIT: its schedstat deltas across it, ns)
 *   lpsoak PER_S EVERY_S LONG_MS -> ok lpsoak  (from now on kd-lpoll makes
 *                 PER_S short intervals a second, paced by ppoll(), and
 *                 every EVERY_S s one interval of a LONG_MS ms sleep)
 *   lpcount    -> ok lpcount SHORT LONG  (intervals kd-lpoll made so far)
 *   lppolls N  -> ok lppolls N NS  (kd-main made N poll() calls with no
 *                 timeout in NS ns: make bench's cost per poll interval)
 *   quit       -> bye, then exit(0); EOF on stdin also exits with 0
 *   other      -> error unknown command
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/sdt.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define UDP_LEN 64
#define NAP_MS 25

enum { T_MAIN, T_SLEEP, T_POLL, T_BURST, T_UDP, T_OP, T_POLLWAIT, T_NAP,
       T_SPIN1, T_SPIN2, T_MAX };

static const char *const thread_names[T_MAX] = {
	"kd-main", "kd-sleep", "kd-poll", "kd-burst",
	"kd-udp", "kd-op", "kd-pollwait", "kd-nap", "kd-spin1", "kd-spin2",
};

static pid_t thread_tids[T_MAX];
static int nthreads;

/* Startup handshake: each thread bumps started once it is named. */
static pthread_mutex_t start_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cv = PTHREAD_COND_INITIALIZER;
static int started;

/* One request slot per command-driven worker (kd-burst, kd-udp). */
struct job {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	long count;
	int pending;
	int done;
	int err;
};

static struct job burst_job = {
	PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0
};
static struct job udp_job = {
	PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0
};
static struct job nap_job = {
	PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0
};

static int idle_pipe[2];	/* kd-poll waits on [0]; nobody writes [1] */
static int udp_tx = -1, udp_rx = -1;
static struct sockaddr_in udp_addr;

static volatile unsigned long spin_counter[2];

void kd_op(int ms);

static void die(const char *what, int err)
{
	fprintf(stderr, "workload: %s: %s\n", what, strerror(err));
	exit(2);
}

/* Sleep ms milliseconds: one clock_nanosleep syscall unless interrupted.
 * Not inlined, so that a user stack taken in the system call names the
 * thread function that called it (the C library's wrapper makes no frame
 * of its own, which hides its direct caller from a frame pointer walk). */
__attribute__((noinline)) static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
		;
}

/* Name the calling thread, record its tid and report it as started. */
static void thread_start(int idx)
{
	pthread_setname_np(pthread_self(), thread_names[idx]);
	thread_tids[idx] = (pid_t)syscall(SYS_gettid);
	pthread_mutex_lock(&start_mu);
	started++;
	pthread_cond_broadcast(&start_cv);
	pthread_mutex_unlock(&start_mu);
}

/* Function traced by uprobes/USDT in tests; must keep its exact name. */
__attribute__((noinline, noipa, used)) void kd_op(int ms)
{
	DTRACE_PROBE1(kd_workload, op_start, ms);
	sleep_ms(ms);
	DTRACE_PROBE1(kd_workload, op_end, ms);
}

static void *sleep_thread(void *arg)
{
	(void)arg;
	thread_start(T_SLEEP);
	for (;;)
		sleep_ms(20);
	return NULL;
}

/* Nearly always inside poll(): what a stop or a signal interrupts. */
static void *pollwait_thread(void *arg)
{
	struct pollfd pfd = { .fd = idle_pipe[0], .events = POLLIN };

	(void)arg;
	thread_start(T_POLLWAIT);
	for (;;)
		poll(&pfd, 1, 200);
	return NULL;
}

static void *poll_thread(void *arg)
{
	struct pollfd pfd = { .fd = idle_pipe[0], .events = POLLIN };

	(void)arg;
	thread_start(T_POLL);
	for (;;) {
		poll(&pfd, 1, 5);
		sleep_ms(30);
	}
	return NULL;
}

static void *op_thread(void *arg)
{
	(void)arg;
	thread_start(T_OP);
	for (;;) {
		kd_op(5);
		sleep_ms(20);
		kd_op(50);
		sleep_ms(20);
	}
	return NULL;
}

static void *spin_thread(void *arg)
{
	int i = (int)(long)arg;

	thread_start(T_SPIN1 + i);
	for (;;)
		spin_counter[i]++;
	return NULL;
}

/* Worker side: wait for a request and return its count. */
static long job_wait(struct job *j)
{
	long n;

	pthread_mutex_lock(&j->mu);
	while (!j->pending)
		pthread_cond_wait(&j->cv, &j->mu);
	j->pending = 0;
	n = j->count;
	pthread_mutex_unlock(&j->mu);
	return n;
}

static void job_finish(struct job *j, int err)
{
	pthread_mutex_lock(&j->mu);
	j->err = err;
	j->done = 1;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
}

/* Main side: hand a request to a worker and wait until it completed. */
static int job_run(struct job *j, long n)
{
	int err;

	pthread_mutex_lock(&j->mu);
	j->count = n;
	j->done = 0;
	j->pending = 1;
	pthread_cond_broadcast(&j->cv);
	while (!j->done)
		pthread_cond_wait(&j->cv, &j->mu);
	err = j->err;
	pthread_mutex_unlock(&j->mu);
	return err;
}

/* A thread that lives for one command: its name must outlive it. */
struct short_job {
	long n;
	pid_t tid;
	char name[16];
};

static void *short_thread(void *arg)
{
	struct short_job *job = arg;

	/* prctl() takes any bytes, where pthread_setname_np() checks */
	prctl(PR_SET_NAME, job->name[0] ? job->name : "kd-short");
	job->tid = (pid_t)syscall(SYS_gettid);
	for (long i = 0; i < job->n; i++)
		syscall(SYS_getpgid, 0);
	return NULL;
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Write tid - 1 to ns_last_pid, so that the next thread (if no other
 * process forks meanwhile) gets tid. */
static int next_tid(pid_t tid)
{
	FILE *f = fopen("/proc/sys/kernel/ns_last_pid", "w");
	int ok;

	if (!f)
		return -1;
	ok = fprintf(f, "%d", (int)tid - 1) > 0;
	return fclose(f) == 0 && ok ? 0 : -1;
}

static void reuse_tid(void)
{
	struct short_job old = { .n = 1 };
	pthread_t t;

	if (pthread_create(&t, NULL, short_thread, &old)) {
		reply("error reuse");
		return;
	}
	pthread_join(t, NULL);
	/* Another process may take the ID first: try again. */
	for (int i = 0; i < 200; i++) {
		struct short_job job = { .n = 0, .name = "kd-reuse" };

		if (next_tid(old.tid) < 0 ||
		    pthread_create(&t, NULL, short_thread, &job)) {
			reply("error reuse %s", strerror(errno));
			return;
		}
		pthread_join(t, NULL);
		if (job.tid == old.tid) {
			reply("ok reuse %d", (int)job.tid);
			return;
		}
	}
	reply("error reuse: the TID was always taken");
}

static char *self_exe;

static void *exec_thread(void *arg)
{
	char *const argv[] = { "workload", "--exec-child", NULL };

	(void)arg;
	prctl(PR_SET_NAME, "kd-exec");
	reply("ok exec %d", (int)syscall(SYS_gettid));
	execv(self_exe, argv);
	die("execv", errno);
	return NULL;
}

/* After exec: one thread, with the leader's TID; wait for a line. */
static int exec_child(void)
{
	char line[256];

	if (fgets(line, sizeof(line), stdin))
		reply("bye");
	return 0;
}

static void *burst_thread(void *arg)
{
	(void)arg;
	thread_start(T_BURST);
	for (;;) {
		long n = job_wait(&burst_job);

		for (long i = 0; i < n; i++)
			syscall(SYS_getsid, 0);
		job_finish(&burst_job, 0);
	}
	return NULL;
}

/* Known sleeps for --syscall-events: the tests look for this function's
 * name in the user stacks. */
static void *nap_thread(void *arg)
{
	(void)arg;
	thread_start(T_NAP);
	for (;;) {
		long n = job_wait(&nap_job);

		for (long i = 0; i < n; i++)
			sleep_ms(NAP_MS);
		job_finish(&nap_job, 0);
	}
	return NULL;
}

static void *udp_thread(void *arg)
{
	char out[UDP_LEN], in[UDP_LEN];

	(void)arg;
	memset(out, 'k', sizeof(out));
	thread_start(T_UDP);
	for (;;) {
		long n = job_wait(&udp_job);
		int err = 0;

		for (long i = 0; i < n && !err; i++) {
			ssize_t r;

			r = sendto(udp_tx, out, sizeof(out), 0,
				   (struct sockaddr *)&udp_addr,
				   sizeof(udp_addr));
			if (r != (ssize_t)sizeof(out)) {
				err = r < 0 ? errno : EIO;
				break;
			}
			r = recvfrom(udp_rx, in, sizeof(in), 0, NULL, NULL);
			if (r != (ssize_t)sizeof(in))
				err = r < 0 ? errno : EIO;
		}
		job_finish(&udp_job, err);
	}
	return NULL;
}

/* Receiver bound on 127.0.0.1 (ephemeral port) plus an unbound sender. */
static void udp_setup(void)
{
	socklen_t len = sizeof(udp_addr);

	udp_rx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	udp_tx = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (udp_rx < 0 || udp_tx < 0)
		die("socket", errno);
	memset(&udp_addr, 0, sizeof(udp_addr));
	udp_addr.sin_family = AF_INET;
	udp_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	udp_addr.sin_port = 0;
	if (bind(udp_rx, (struct sockaddr *)&udp_addr, sizeof(udp_addr)) < 0)
		die("bind", errno);
	if (getsockname(udp_rx, (struct sockaddr *)&udp_addr, &len) < 0)
		die("getsockname", errno);
}

static void start_thread(void *(*fn)(void *), void *arg, int cpu)
{
	pthread_attr_t attr;
	pthread_t t;
	int err;

	pthread_attr_init(&attr);
	if (cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		err = pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
		if (err)
			die("pthread_attr_setaffinity_np", err);
	}
	err = pthread_create(&t, &attr, fn, arg);
	if (err)
		die("pthread_create", err);
	pthread_attr_destroy(&attr);
	nthreads++;
}

/* Parse a non-negative decimal count; returns -1 if invalid. */
static long parse_count(const char *s)
{
	char *end;
	long n;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	n = strtol(s, &end, 10);
	if (errno || *end != '\0')
		return -1;
	return n;
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Decode hex digits into out (at most size - 1 bytes, NUL-terminated);
 * returns the byte count, or -1 if invalid. */
static int parse_hex(const char *s, char *out, size_t size)
{
	size_t n = 0;

	while (s[0] && s[1] && n + 1 < size) {
		unsigned int byte;

		if (sscanf(s, "%2x", &byte) != 1)
			return -1;
		out[n++] = (char)byte;
		s += 2;
	}
	if (*s)
		return -1;
	out[n] = '\0';
	return (int)n;
}

static void reply(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* ---- kd-lpoll: poll intervals on command (--long-poll tests) -------- */

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int cmd;		/* LP_* request for the thread, 0: none */
	long arg1, arg2, arg3;
	volatile int go;	/* lpend: leave the spin */
	int done;		/* the request is complete */
	int stoppable;		/* lplong: spinning, ready to be stopped */
	long start, end, run, wait;
	long late, read1;	/* ns between the edges and the schedstat reads */
	long shorts, longs;	/* intervals made (lpsoak, lpcount) */
	pid_t tid;
} lp = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0,
	 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 };

enum { LP_GAP = 1, LP_LONG, LP_SOAK };

static long now_ns(void);

/* The thread's schedstat: time on a CPU and waiting on a run queue. */
static void lp_schedstat(int fd, long *run, long *wait)
{
	char buf[128];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

	*run = *wait = -1;
	if (n > 0) {
		buf[n] = '\0';
		sscanf(buf, "%ld %ld", run, wait);
	}
}

static void lp_busy(long ns)
{
	long until = now_ns() + ns;

	while (now_ns() < until)
		;
}

/* The request's interval ends: its figures but the end, which is taken
 * right before the next poll(); lp_report() tells main after it. */
static void lp_finish(long start, long read0, long run0, long wait0, int fd)
{
	long run1, wait1;

	lp.read1 = now_ns();
	lp.late = read0 - start;
	lp_schedstat(fd, &run1, &wait1);
	lp.run = run1 - run0;
	lp.wait = wait1 - wait0;
	lp.start = start;
}

static void lp_report(long end)
{
	pthread_mutex_lock(&lp.mu);
	lp.end = end;
	lp.late += end - lp.read1;
	lp.cmd = 0;
	lp.done = 1;
	pthread_cond_broadcast(&lp.cv);
	pthread_mutex_unlock(&lp.mu);
}

static void *lpoll_thread(void *arg)
{
	struct pollfd pfd = { .fd = idle_pipe[0], .events = POLLIN };
	char path[64];
	long soak_per_s = 0, soak_every = 0, soak_ms = 0, next = 0, due = 0;
	int report = 0;		/* a request's interval ends at this poll */
	int fd;

	if ((long)arg >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET((int)(long)arg, &set);
		sched_setaffinity(0, sizeof(set), &set);
	}
	prctl(PR_SET_NAME, "kd-lpoll");
	__atomic_store_n(&lp.tid, (pid_t)syscall(SYS_gettid),
			 __ATOMIC_RELEASE);
	snprintf(path, sizeof(path), "/proc/self/task/%d/schedstat",
		 (int)lp.tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	for (;;) {
		long start, read0, run0 = 0, wait0 = 0;
		int cmd;

		if (report) {
			long end = now_ns();

			poll(&pfd, 1, 1);
			lp_report(end);
			report = 0;
		} else if (soak_per_s) {
			struct timespec ts = { 0, 0 };
			long left = next - now_ns();

			if (left > 0)
				ts.tv_nsec = left;
			ppoll(&pfd, 1, &ts, NULL);
		} else {
			poll(&pfd, 1, 1);
		}
		start = now_ns();
		cmd = __atomic_load_n(&lp.cmd, __ATOMIC_ACQUIRE);
		if (cmd == LP_GAP || cmd == LP_LONG)
			lp_schedstat(fd, &run0, &wait0);
		read0 = now_ns();
		if (cmd == LP_GAP) {
			lp_busy(lp.arg1 * 1000);
			lp_finish(start, read0, run0, wait0, fd);
			report = 1;
		} else if (cmd == LP_LONG) {
			lp_busy(lp.arg1 * 1000000);
			sleep_ms((int)lp.arg2);
			pthread_mutex_lock(&lp.mu);
			lp.stoppable = 1;
			pthread_cond_broadcast(&lp.cv);
			pthread_mutex_unlock(&lp.mu);
			while (!lp.go)
				;
			lp_finish(start, read0, run0, wait0, fd);
			report = 1;
		} else if (cmd == LP_SOAK) {
			soak_per_s = lp.arg1;
			soak_every = lp.arg2 * 1000000000L;
			soak_ms = lp.arg3;
			next = start;
			due = start + soak_every;
			lp_finish(start, read0, 0, 0, fd);
			report = 1;
		}
		if (!soak_per_s)
			continue;
		if (start >= due) {
			sleep_ms((int)soak_ms);
			due += soak_every;
			__atomic_add_fetch(&lp.longs, 1, __ATOMIC_RELAXED);
		} else {
			__atomic_add_fetch(&lp.shorts, 1, __ATOMIC_RELAXED);
		}
		next += 1000000000L / soak_per_s;
	}
	return NULL;
}

/* Main side: hand kd-lpoll a request and wait until it is complete, or
 * (lplong) until the thread is ready to be stopped. */
static void lp_request(int cmd, long a1, long a2, long a3)
{
	pthread_mutex_lock(&lp.mu);
	lp.arg1 = a1;
	lp.arg2 = a2;
	lp.arg3 = a3;
	lp.go = 0;
	lp.done = 0;
	lp.stoppable = 0;
	__atomic_store_n(&lp.cmd, cmd, __ATOMIC_RELEASE);
	while (cmd == LP_LONG ? !lp.stoppable : !lp.done)
		pthread_cond_wait(&lp.cv, &lp.mu);
	pthread_mutex_unlock(&lp.mu);
}

static int lp_command(const char *line)
{
	long a1 = -1, a2 = -1, a3 = -1;

	if (sscanf(line, "lpoll %ld", &a1) == 1) {
		pthread_t t;

		if (lp.tid || a1 < -1 || a1 >= CPU_SETSIZE ||
		    pthread_create(&t, NULL, lpoll_thread, (void *)a1)) {
			reply("error lpoll");
			return 1;
		}
		while (!__atomic_load_n(&lp.tid, __ATOMIC_ACQUIRE))
			sched_yield();
		reply("ok lpoll %d", (int)lp.tid);
	} else if (!lp.tid && strncmp(line, "lp", 2) == 0 &&
		   strncmp(line, "lppolls ", 8) != 0) {
		reply("error no lpoll thread");
	} else if (sscanf(line, "lpgap %ld", &a1) == 1 && a1 >= 0) {
		lp_request(LP_GAP, a1, 0, 0);
		reply("ok lpgap %ld %ld", lp.start, lp.end);
	} else if (sscanf(line, "lplong %ld %ld", &a1, &a2) == 2 &&
		   a1 >= 0 && a2 >= 0) {
		lp_request(LP_LONG, a1, a2, 0);
		reply("ok lplong %d", (int)lp.tid);
	} else if (strcmp(line, "lpend") == 0) {
		pthread_mutex_lock(&lp.mu);
		lp.go = 1;
		while (!lp.done)
			pthread_cond_wait(&lp.cv, &lp.mu);
		pthread_mutex_unlock(&lp.mu);
		reply("ok lpend %ld %ld %ld %ld %ld", lp.start, lp.end, lp.run,
		      lp.wait, lp.late);
	} else if (sscanf(line, "lpsoak %ld %ld %ld", &a1, &a2, &a3) == 3 &&
		   a1 > 0 && a2 > 0 && a3 >= 0) {
		lp_request(LP_SOAK, a1, a2, a3);
		reply("ok lpsoak");
	} else if (sscanf(line, "lppolls %ld", &a1) == 1 && a1 >= 0) {
		struct pollfd pfd = { .fd = idle_pipe[0], .events = POLLIN };
		long start = now_ns();

		for (long i = 0; i < a1; i++)
			poll(&pfd, 1, 0);
		reply("ok lppolls %ld %ld", a1, now_ns() - start);
	} else if (strcmp(line, "lpcount") == 0) {
		reply("ok lpcount %ld %ld",
		      __atomic_load_n(&lp.shorts, __ATOMIC_RELAXED),
		      __atomic_load_n(&lp.longs, __ATOMIC_RELAXED));
	} else {
		return 0;
	}
	return 1;
}

/* ---- Benchmark commands (tests/tools/bench.py) ----------------------- */

static long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);	/* vDSO: no system call */
	return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

struct pingpong {
	int to_pong[2], to_ping[2];
	long n;
};

static void *pong_thread(void *arg)
{
	struct pingpong *pp = arg;
	char c;

	pthread_setname_np(pthread_self(), "kd-pong");
	for (long i = 0; i < pp->n; i++) {
		if (read(pp->to_pong[0], &c, 1) != 1 ||
		    write(pp->to_ping[1], &c, 1) != 1)
			break;
	}
	return NULL;
}

struct ping_result {
	struct pingpong *pp;
	long ns;
};

static void *ping_thread(void *arg)
{
	struct ping_result *res = arg;
	struct pingpong *pp = res->pp;
	long start;
	char c = 'k';

	pthread_setname_np(pthread_self(), "kd-ping");
	start = now_ns();
	for (long i = 0; i < pp->n; i++) {
		if (write(pp->to_pong[1], &c, 1) != 1 ||
		    read(pp->to_ping[0], &c, 1) != 1) {
			res->ns = -1;
			return NULL;
		}
	}
	res->ns = now_ns() - start;
	return NULL;
}

/* Two threads on one CPU: every round trip is two wakeups and two
 * context switches. */
static long pingpong_run(long n, int cpu)
{
	struct pingpong pp = { .n = n };
	struct ping_result res = { .pp = &pp, .ns = -1 };
	pthread_attr_t attr;
	pthread_t ping, pong;
	cpu_set_t set;

	if (pipe(pp.to_pong) < 0 || pipe(pp.to_ping) < 0)
		die("pipe", errno);
	pthread_attr_init(&attr);
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (pthread_attr_setaffinity_np(&attr, sizeof(set), &set) ||
	    pthread_create(&pong, &attr, pong_thread, &pp))
		die("pingpong thread", EINVAL);
	if (pthread_create(&ping, &attr, ping_thread, &res))
		die("pingpong thread", EINVAL);
	pthread_attr_destroy(&attr);
	pthread_join(ping, NULL);
	if (res.ns < 0)		/* let kd-pong's read() end */
		close(pp.to_pong[1]);
	pthread_join(pong, NULL);
	for (int i = 0; i < 2; i++) {
		close(pp.to_pong[i]);
		close(pp.to_ping[i]);
	}
	return res.ns;
}

/* A crowd thread: a dozen distinct system calls, then a 250 ms sleep, or
 * a poll() of arg >> 32 ms when that is not 0; arg & 0xffffffff is its
 * number. */
static pthread_mutex_t crowd_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t crowd_go = PTHREAD_COND_INITIALIZER;
static long crowd_started;	/* threads of the crowd allowed to loop */

static void *crowd_thread(void *arg)
{
	char name[16];
	struct rusage ru;
	int poll_ms = (int)((long)arg >> 32);
	long number = (long)arg & 0xffffffffL;

	snprintf(name, sizeof(name), "kd-c%05ld", number);
	pthread_setname_np(pthread_self(), name);
	/* Wait until the whole crowd exists: thousands of looping threads
	 * would starve the one creating the rest. */
	pthread_mutex_lock(&crowd_lock);
	while (number >= crowd_started)
		pthread_cond_wait(&crowd_go, &crowd_lock);
	pthread_mutex_unlock(&crowd_lock);
	for (;;) {
		syscall(SYS_getpid);
		syscall(SYS_getppid);
		syscall(SYS_getuid);
		syscall(SYS_geteuid);
		syscall(SYS_getgid);
		syscall(SYS_getegid);
		syscall(SYS_getpgid, 0);
		syscall(SYS_getsid, 0);
		syscall(SYS_gettid);
		syscall(SYS_getpriority, PRIO_PROCESS, 0);
		syscall(SYS_getrusage, RUSAGE_THREAD, &ru);
		syscall(SYS_sched_getscheduler, 0);
		if (poll_ms)
			poll(NULL, 0, poll_ms);
		else
			sleep_ms(250);
	}
	return NULL;
}

static long crowd_size;

static int crowd_add(long n, int poll_ms)
{
	pthread_attr_t attr;
	pthread_t t;
	int err = 0;

	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 64 * 1024);
	for (long i = 0; i < n && !err; i++) {
		err = pthread_create(&t, &attr, crowd_thread,
				     (void *)(crowd_size | (long)poll_ms << 32));
		if (!err) {
			pthread_detach(t);
			crowd_size++;
		}
	}
	pthread_attr_destroy(&attr);
	pthread_mutex_lock(&crowd_lock);
	crowd_started = crowd_size;
	pthread_cond_broadcast(&crowd_go);
	pthread_mutex_unlock(&crowd_lock);
	return err;
}

/* The benchmark commands; returns 0 when line is none of them. */
static int bench_command(const char *line)
{
	long n;

	if (strncmp(line, "getppid ", 8) == 0) {
		long start;

		n = parse_count(line + 8);
		if (n < 0) {
			reply("error bad argument");
			return 1;
		}
		start = now_ns();
		for (long i = 0; i < n; i++)
			syscall(SYS_getppid);
		reply("ok getppid %ld %ld", n, now_ns() - start);
	} else if (strncmp(line, "pingpong ", 9) == 0) {
		char count[32];
		int cpu;
		long ns;

		if (sscanf(line + 9, "%31s %d", count, &cpu) != 2 ||
		    (n = parse_count(count)) < 0 || cpu < 0 ||
		    cpu >= CPU_SETSIZE) {
			reply("error bad argument");
			return 1;
		}
		ns = pingpong_run(n, cpu);
		if (ns < 0)
			reply("error pingpong failed");
		else
			reply("ok pingpong %ld %ld", n, ns);
	} else if (strncmp(line, "crowd ", 6) == 0) {
		char count[32];
		int err, ms = 0;

		if (sscanf(line + 6, "%31s %d", count, &ms) < 1 ||
		    (n = parse_count(count)) < 0 || ms < 0)
			n = -1;
		if (n < 0)
			reply("error bad argument");
		else if ((err = crowd_add(n, ms)))
			reply("error crowd %s", strerror(err));
		else
			reply("ok crowd %ld", n);
	} else {
		return 0;
	}
	return 1;
}

static int leader_exit;		/* leaderexit: kd-main leaves */

static void read_commands(void);

static void *command_thread(void *arg)
{
	(void)arg;
	reply("ok leaderexit %d", (int)syscall(SYS_gettid));
	read_commands();
	exit(0);
}

/* Name the live thread idx with the bytes of name (any bytes: the kernel
 * takes them through the comm file). */
static int name_thread(int idx, const char *name, size_t len)
{
	char path[64];
	int fd, err = 0;

	snprintf(path, sizeof(path), "/proc/self/task/%d/comm",
		 (int)thread_tids[idx]);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	if (write(fd, name, len) != (ssize_t)len)
		err = errno ? errno : EIO;
	close(fd);
	return err;
}

static void handle(char *line)
{
	long n;

	if (strcmp(line, "ping") == 0) {
		reply("pong");
	} else if (strcmp(line, "tids") == 0) {
		printf("tids");
		for (int i = 0; i < nthreads; i++)
			printf(" %s=%d", thread_names[i], (int)thread_tids[i]);
		reply("%s", "");
	} else if (strcmp(line, "quit") == 0) {
		reply("bye");
		exit(0);
	} else if (strncmp(line, "burst ", 6) == 0) {
		n = parse_count(line + 6);
		if (n < 0)
			reply("error bad argument");
		else if (job_run(&burst_job, n))
			reply("error burst failed");
		else
			reply("ok burst %ld", n);
	} else if (strncmp(line, "nap ", 4) == 0) {
		n = parse_count(line + 4);
		if (n < 0)
			reply("error bad argument");
		else if (job_run(&nap_job, n))
			reply("error nap failed");
		else
			reply("ok nap %ld", n);
	} else if (strncmp(line, "short ", 6) == 0) {
		struct short_job job = { .n = parse_count(line + 6) };
		pthread_t t;
		int err;

		if (job.n < 0) {
			reply("error bad argument");
		} else if ((err = pthread_create(&t, NULL, short_thread, &job))) {
			reply("error short %s", strerror(err));
		} else {
			pthread_join(t, NULL);
			reply("ok short %ld %d", job.n, (int)job.tid);
		}
	} else if (strncmp(line, "udp ", 4) == 0) {
		n = parse_count(line + 4);
		if (n < 0) {
			reply("error bad argument");
		} else {
			int err = job_run(&udp_job, n);

			if (err)
				reply("error udp %s", strerror(err));
			else
				reply("ok udp %ld", n);
		}
	} else if (strcmp(line, "reuse") == 0) {
		reuse_tid();
	} else if (strcmp(line, "exec") == 0) {
		pthread_t t;

		/* The answer comes from the new thread, before its execve(). */
		if (pthread_create(&t, NULL, exec_thread, NULL))
			reply("error exec");
	} else if (strncmp(line, "ops ", 4) == 0) {
		n = parse_count(line + 4);
		if (n < 0) {
			reply("error bad argument");
		} else {
			for (long i = 0; i < n; i++)
				kd_op(0);
			reply("ok ops %ld", n);
		}
	} else if (bench_command(line) || lp_command(line)) {
		/* answered */
	} else if (strncmp(line, "rename ", 7) == 0) {
		char name[16] = "";

		if (parse_hex(line + 7, name, sizeof(name)) < 0) {
			reply("error bad argument");
		} else {
			prctl(PR_SET_NAME, name);
			reply("ok rename");
		}
	} else if (strcmp(line, "leaderexit") == 0) {
		leader_exit = 1;
	} else if (strncmp(line, "tname ", 6) == 0) {
		char name[16] = "";
		char *space = strchr(line + 6, ' ');
		int idx = -1, len = -1, err;

		if (space) {
			*space = '\0';
			for (int i = 0; i < nthreads; i++)
				if (strcmp(thread_names[i], line + 6) == 0)
					idx = i;
			len = parse_hex(space + 1, name, sizeof(name));
		}
		if (idx < 0 || len <= 0)
			reply("error bad argument");
		else if ((err = name_thread(idx, name, (size_t)len)))
			reply("error tname %s", strerror(err));
		else
			reply("ok tname %d", (int)thread_tids[idx]);
	} else if (strncmp(line, "shortname ", 10) == 0) {
		struct short_job job = { .n = -1 };
		char *space = strchr(line + 10, ' ');
		pthread_t t;

		if (space) {
			*space = '\0';
			job.n = parse_count(space + 1);
		}
		if (job.n < 0 ||
		    parse_hex(line + 10, job.name, sizeof(job.name)) <= 0) {
			reply("error bad argument");
		} else if (pthread_create(&t, NULL, short_thread, &job)) {
			reply("error shortname");
		} else {
			pthread_join(t, NULL);
			reply("ok shortname %ld %d", job.n, (int)job.tid);
		}
	} else {
		reply("error unknown command");
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: workload [--spin CPU]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	sigset_t all, old;
	int spin_cpu = -1;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 2 && strcmp(argv[1], "--exec-child") == 0)
		return exec_child();
	self_exe = realpath("/proc/self/exe", NULL);
	if (!self_exe)
		die("realpath", errno);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--spin") == 0 && i + 1 < argc) {
			long c = parse_count(argv[++i]);

			if (c < 0 || c >= CPU_SETSIZE)
				usage();
			spin_cpu = (int)c;
		} else {
			usage();
		}
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	pthread_setname_np(pthread_self(), thread_names[T_MAIN]);
	thread_tids[T_MAIN] = (pid_t)syscall(SYS_gettid);
	nthreads = 1;
	started = 1;

	if (pipe2(idle_pipe, O_CLOEXEC) < 0)
		die("pipe2", errno);
	udp_setup();

	/* Workers inherit a full signal mask; only kd-main gets signals. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	start_thread(sleep_thread, NULL, -1);
	start_thread(poll_thread, NULL, -1);
	start_thread(burst_thread, NULL, -1);
	start_thread(udp_thread, NULL, -1);
	start_thread(op_thread, NULL, -1);
	start_thread(pollwait_thread, NULL, -1);
	start_thread(nap_thread, NULL, -1);
	if (spin_cpu >= 0) {
		start_thread(spin_thread, (void *)0L, spin_cpu);
		start_thread(spin_thread, (void *)1L, spin_cpu);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);

	pthread_mutex_lock(&start_mu);
	while (started < nthreads)
		pthread_cond_wait(&start_cv, &start_mu);
	pthread_mutex_unlock(&start_mu);

	reply("ready %d", (int)getpid());
	read_commands();
	return 0;
}

static void read_commands(void)
{
	char line[256];

	while (fgets(line, sizeof(line), stdin)) {
		size_t len = strlen(line);

		if (len && line[len - 1] == '\n') {
			line[--len] = '\0';
		} else if (!feof(stdin)) {
			/* Overlong line: drop the rest of it. */
			int c;

			while ((c = getchar()) != EOF && c != '\n')
				;
			reply("error line too long");
			continue;
		}
		if (len && line[len - 1] == '\r')
			line[--len] = '\0';
		handle(line);
		if (leader_exit && thread_tids[T_MAIN] ==
		    (pid_t)syscall(SYS_gettid)) {
			pthread_t t;

			if (pthread_create(&t, NULL, command_thread, NULL)) {
				reply("error leaderexit");
				leader_exit = 0;
				continue;
			}
			pthread_exit(NULL);
		}
	}
}
