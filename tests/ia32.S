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
 * A 32-bit (ia32) test process with known system calls, no C library.
 * Build: gcc -m32 -nostdlib -static -o ia32 ia32.S
 *
 * It writes "ready\n", waits for a byte on stdin, then makes (ia32
 * numbers) 97 getppid (64), 11 waitpid(-1, 0, WNOHANG) (7) and 7
 * poll(NULL, 0, 20 ms) (168), writes "done\n", waits for another byte
 * (or EOF) and exits.  On x86-64, 64 is semget, 7 is poll and 168 is
 * swapoff.
 */
	.text
	.globl _start
_start:
	movl $ready, %ecx
	movl $6, %edx
	call say
	call wait_byte

	movl $97, %esi
1:	movl $64, %eax		/* getppid */
	int $0x80
	decl %esi
	jnz 1b

	movl $11, %esi
2:	movl $7, %eax		/* waitpid(-1, NULL, WNOHANG): ECHILD */
	movl $-1, %ebx
	xorl %ecx, %ecx
	movl $1, %edx
	int $0x80
	decl %esi
	jnz 2b

	movl $7, %esi
3:	movl $168, %eax		/* poll(NULL, 0, 20) */
	xorl %ebx, %ebx
	xorl %ecx, %ecx
	movl $20, %edx
	int $0x80
	decl %esi
	jnz 3b

	movl $done, %ecx
	movl $5, %edx
	call say
	call wait_byte
	movl $1, %eax		/* exit(0) */
	xorl %ebx, %ebx
	int $0x80

/* write(1, %ecx, %edx) */
say:
	movl $4, %eax
	movl $1, %ebx
	int $0x80
	ret

/* read(0, buf, 1) */
wait_byte:
	movl $3, %eax
	xorl %ebx, %ebx
	movl $buf, %ecx
	movl $1, %edx
	int $0x80
	ret

	.data
ready:	.ascii "ready\n"
done:	.ascii "done\n"
buf:	.byte 0
	.section .note.GNU-stack,"",@progbits
