package fsnode

import "github.com/hanwen/go-fuse/v2/fs"

// The go-fuse interfaces each node type implements; a missing method is a
// compile error here rather than a silent ENOSYS/ENOTSUP at run time.
var (
	_ = (fs.NodeOnAdder)((*lockDir)(nil))
	_ = (fs.NodeGetattrer)((*lockDir)(nil))
	_ = (fs.NodeLookuper)((*lockDir)(nil))
	_ = (fs.NodeReaddirer)((*lockDir)(nil))
	_ = (fs.NodeMkdirer)((*lockDir)(nil))
	_ = (fs.NodeRmdirer)((*lockDir)(nil))
	_ = (fs.NodeUnlinker)((*lockDir)(nil))
	_ = (fs.NodeRenamer)((*lockDir)(nil))
	_ = (fs.NodeLinker)((*lockDir)(nil))
	_ = (fs.NodeSymlinker)((*lockDir)(nil))
	_ = (fs.NodeMknoder)((*lockDir)(nil))
	_ = (fs.NodeCreater)((*lockDir)(nil))
	_ = (fs.NodeStatfser)((*lockDir)(nil))

	_ = (fs.NodeGetattrer)((*timeoutDir)(nil))
	_ = (fs.NodeLookuper)((*timeoutDir)(nil))
	_ = (fs.NodeReaddirer)((*timeoutDir)(nil))
	_ = (fs.NodeMkdirer)((*timeoutDir)(nil))
	_ = (fs.NodeRmdirer)((*timeoutDir)(nil))
	_ = (fs.NodeUnlinker)((*timeoutDir)(nil))
	_ = (fs.NodeRenamer)((*timeoutDir)(nil))
	_ = (fs.NodeLinker)((*timeoutDir)(nil))
	_ = (fs.NodeSymlinker)((*timeoutDir)(nil))
	_ = (fs.NodeMknoder)((*timeoutDir)(nil))
	_ = (fs.NodeCreater)((*timeoutDir)(nil))
	_ = (fs.NodeStatfser)((*timeoutDir)(nil))

	_ = (fs.NodeGetattrer)((*lockNode)(nil))
	_ = (fs.NodeSetattrer)((*lockNode)(nil))
	_ = (fs.NodeOpener)((*lockNode)(nil))
	_ = (fs.NodeStatfser)((*lockNode)(nil))
	_ = (fs.NodeGetxattrer)((*lockNode)(nil))
	_ = (fs.NodeListxattrer)((*lockNode)(nil))
	_ = (fs.NodeSetxattrer)((*lockNode)(nil))
	_ = (fs.NodeRemovexattrer)((*lockNode)(nil))

	_ = (fs.FileReader)((*handle)(nil))
	_ = (fs.FileWriter)((*handle)(nil))
	_ = (fs.FileWritever)((*handle)(nil))
	_ = (fs.FileFsyncer)((*handle)(nil))
	_ = (fs.FileReleaser)((*handle)(nil))
)
