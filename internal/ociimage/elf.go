package ociimage

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// elfTarget is what an ELF header says about the machine a binary runs on.
type elfTarget struct {
	machine elf.Machine
	class   elf.Class
	order   binary.ByteOrder
}

// elfTargets are the GOARCH values the image can be labelled with (32-bit arm is left out: it needs a variant).
var elfTargets = map[string]elfTarget{
	"amd64":   {elf.EM_X86_64, elf.ELFCLASS64, binary.LittleEndian},
	"arm64":   {elf.EM_AARCH64, elf.ELFCLASS64, binary.LittleEndian},
	"386":     {elf.EM_386, elf.ELFCLASS32, binary.LittleEndian},
	"ppc64le": {elf.EM_PPC64, elf.ELFCLASS64, binary.LittleEndian},
	"riscv64": {elf.EM_RISCV, elf.ELFCLASS64, binary.LittleEndian},
	"s390x":   {elf.EM_S390, elf.ELFCLASS64, binary.BigEndian},
}

func elfMachine(arch string) (elfTarget, error) {
	t, ok := elfTargets[arch]
	if !ok {
		return elfTarget{}, fmt.Errorf("architecture %q: want one of amd64, arm64, 386, ppc64le, riscv64, s390x", arch)
	}
	return t, nil
}

// CheckELF makes sure r holds an executable the image can run: ELF for arch (a GOARCH), and static, since the
// image has no dynamic loader or libc (a binary with an interpreter fails there with a bare "no such file or
// directory").
func CheckELF(r io.ReaderAt, arch string) error {
	want, err := elfMachine(arch)
	if err != nil {
		return err
	}
	f, err := elf.NewFile(r)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("not an ELF executable: %w", err)
		}
		return fmt.Errorf("read ELF header: %w", err)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("ELF type %s, not an executable", f.Type)
	}
	if f.Machine != want.machine || f.Class != want.class || f.ByteOrder != want.order {
		return fmt.Errorf("built for %s (%s, %s), not for %s", f.Machine, f.Class, f.ByteOrder, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked (it names an interpreter): build it with CGO_ENABLED=0")
		}
	}
	return nil
}
