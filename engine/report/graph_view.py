"""The report's graph section: the folded graph (engine.report.folding) drawn by a small embedded script.

The page carries the folded graph as compact JSON (one entry per layer, one
per group) and about 200 lines of script that lay out and draw the groups
that are open: no network, no external file.  A closed group is a box with
its name, layer count, share of the time and its hottest layers; a click
opens it in place (another click on its title closes it); the wheel zooms and
a drag pans.  On load the hottest groups are opened while the picture stays
under `INITIAL_BOXES` boxes, so a model of any size starts as a readable
picture of where its time goes.

Size: about 25 bytes per layer (labels interned), so 100,000 layers fit in a
few megabytes; the script only ever lays out what is open.
"""
from __future__ import annotations

import json
from html import escape
from typing import TYPE_CHECKING, Optional

from engine.naming import is_numbering_name, layer_names
from engine.report.folding import FoldedGraph, fold_graph
from engine.report.svg import HEAT_STOPS

if TYPE_CHECKING:
    from engine.analysis import ModelAnalysis
    from engine.profile import Profile

INITIAL_BOXES = 40
GLOBAL_HOT = 10  # the hottest layers overall are marked with their rank wherever they are drawn


def short_label(analysis: "ModelAnalysis", node_id: str, names: dict[str, str]) -> str:
    """What a layer's box says inside its group: the last part of its name, or "Op #k" (engine.naming)."""
    node = analysis.graph.nodes_by_id[node_id]
    if node.name and not is_numbering_name(node.name, node.op_type):
        return node.name.rstrip("/").rsplit("/", 1)[-1] or node.name
    return names[node_id].rsplit(" / ", 1)[-1]


def graph_data(folded: FoldedGraph, analysis: "ModelAnalysis", profile: Optional["Profile"],
               names: Optional[dict[str, str]] = None) -> dict:
    strings: dict[str, int] = {}

    def intern(text: str) -> int:
        index = strings.get(text)
        if index is None:
            index = strings[text] = len(strings)
        return index

    kinds: dict[str, int] = {}
    by_id = analysis.graph.nodes_by_id
    # A layer's group is not stored: the script finds it from the groups' children.
    layers = {"label": [], "op": [], "ms": [], "kind": []}
    for k, node_id in enumerate(folded.node_ids):
        layers["label"].append(intern(short_label(analysis, node_id, names)))
        layers["op"].append(intern(by_id[node_id].op_type))
        ms = folded.times_ms[k]
        layers["ms"].append(None if ms is None else float(f"{ms:.4g}"))
        layers["kind"].append(kinds.setdefault(folded.kinds[k], len(kinds)))
    if len(kinds) == 1:  # the usual case: one kind for every layer, said once
        layers["kind"] = 0
    group_kinds = ("root", "stage", "namespace", "run")
    groups = {"name": [], "kind": [], "parent": [], "children": [], "layers": [], "ms": [], "timeKind": [],
              "hot": [], "edges": []}
    for group in folded.groups:
        groups["name"].append(intern(group.name))
        groups["kind"].append(group_kinds.index(group.kind))
        groups["parent"].append(group.parent)
        groups["children"].append(group.children)
        groups["layers"].append(group.layers)
        groups["ms"].append(None if group.time_ms is None else float(f"{group.time_ms:.5g}"))
        groups["timeKind"].append(kinds.setdefault(group.time_kind or "not run", len(kinds)))
        groups["hot"].append(group.hot)
        groups["edges"].append([p for edge in group.edges for p in edge])
    total = sum(ms for ms in folded.times_ms if ms is not None)
    return {"strings": list(strings), "kinds": list(kinds), "total": total, "L": layers, "G": groups,
            "hot": folded.hottest[:GLOBAL_HOT], "initialBoxes": INITIAL_BOXES,
            "heat": [[stop, list(rgb)] for stop, rgb in HEAT_STOPS], "groupKinds": list(group_kinds),
            "target": str(profile.target.get("name", "")) if profile is not None else ""}


def graph_section(analysis: "ModelAnalysis", profile: Optional["Profile"],
                  names: Optional[dict[str, str]] = None) -> str:
    """`names`: engine.naming.layer_names(analysis), when the caller has it already."""
    folded = fold_graph(analysis, profile)
    data = json.dumps(graph_data(folded, analysis, profile, names), separators=(",", ":"), allow_nan=False)
    data = data.replace("</", "<\\/")  # a name holding "</script>" must not end the data island
    groups = len(folded.groups) - 1
    coloured = f" on {escape(str(profile.target.get('name', '')))}" if profile is not None else ""
    return (f"<h2 id='graph'>Graph, folded, coloured by time{coloured}</h2>"
            f"<p class='sub'>{len(folded.node_ids)} layers in {groups} groups (by stage, then namespace; runs of "
            f"consecutive layers where a group is large). Each box: name, layers, share of the summed layer "
            f"{profile.time_names[0] if profile is not None else 'median'}s; darker = more time. Inside a "
            f"closed group: its hottest layers; #1..#{GLOBAL_HOT} rank the "
            f"hottest layers of the model. Click a group to open it, its title to close it; wheel to zoom, drag "
            f"to pan.</p>"
            "<div class='ls-graph-tools'><button data-act='fit'>Fit</button> <button data-act='hot'>Open the "
            "hottest path</button> <button data-act='close'>Close all</button> <span class='sub' "
            "id='ls-graph-status'></span></div>"
            "<div id='ls-graph' class='ls-graph'><noscript>The graph needs JavaScript; the tables of this report "
            "hold the same figures.</noscript></div>"
            f"<script type='application/json' id='ls-graph-data'>{data}</script>"
            f"<script>{_SCRIPT}</script>")


GRAPH_CSS = """
.ls-graph{border:1px solid #ddd;height:820px;overflow:hidden;cursor:grab;background:#fcfcfc;user-select:none}
.ls-graph svg{width:100%;height:100%;display:block}.ls-graph-tools{margin:6px 0}
.ls-graph-tools button{font-size:12px;padding:2px 8px}
.ls-graph .g-box,.ls-graph .g-head{cursor:pointer}
"""

# The layout: children of an open group in execution order, layered by the longest path along the
# group's edges (edges go forward in execution order; a backward one is drawn but does not layer),
# each layer a centred row.  Open groups are laid out first and drawn as frames around their content.
_SCRIPT = r"""
(function(){
const D=JSON.parse(document.getElementById('ls-graph-data').textContent);
const S=D.strings,L=D.L,G=D.G,host=document.getElementById('ls-graph');
L.parent=new Array(L.label.length);G.children.forEach((ch,g)=>{for(const c of ch)if(c>=0)L.parent[c]=g;});
if(!Array.isArray(L.kind))L.kind=new Array(L.label.length).fill(L.kind);G.kind=G.kind.map(k=>D.groupKinds[k]);
const WRAP_DOWN=8,WRAP_ACROSS=5,BOX_W=240,LAYER_W=220,LAYER_H=46,GAP_X=22,GAP_Y=30,HEAD=28,PAD=12,ROW=16;
const NS='http://www.w3.org/2000/svg';const hotRank=new Map(D.hot.map((l,i)=>[l,i+1]));
const maxMs=Math.max(1e-12,...D.hot.map(l=>L.ms[l]||0));const total=D.total||1;
const open=new Set([0]),MIN_READABLE=0.75;
function esc(t){return String(t).replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));}
function heat(f){f=Math.max(0,Math.min(1,f));const H=D.heat;for(let i=1;i<H.length;i++){if(f<=H[i][0]){
 const t=(f-H[i-1][0])/(H[i][0]-H[i-1][0]||1),a=H[i-1][1],b=H[i][1];
 return 'rgb('+a.map((v,k)=>Math.round(v+(b[k]-v)*t)).join(',')+')';}}return 'rgb('+H[H.length-1][1].join(',')+')';}
function ink(f){return f>0.62?'#fff':'#222';}
function ms(v){return v==null?'not timed':(v>=100?v.toFixed(0):v>=1?v.toFixed(2):v.toPrecision(3))+' ms';}
function pct(v){return v==null?'':(100*v/total).toFixed(v/total<0.001?2:1)+' %';}
function cut(t,n){return t.length>n?t.slice(0,n-1)+'…':t;}
function gpath(g){const p=[];while(g){if(G.kind[g]!=='run')p.unshift(S[G.name[g]]);g=G.parent[g];}return p;}
function layerName(l){return gpath(L.parent[l]).concat([S[L.label[l]]]).join(' / ');}
function within(l,s){const p=[S[L.label[l]]];let g=L.parent[l];while(g!=null&&g!==s){if(G.kind[g]!=='run')p.unshift(S[G.name[g]]);g=G.parent[g];}return p.join('/');}
function hotText(l,s){const r=hotRank.get(l);return (r?'#'+r+' ':'')+cut(within(l,s),26)+(S[L.label[l]]===S[L.op[l]]?'':' · '+S[L.op[l]])+' · '+ms(L.ms[l]);}
function caption(s){return G.layers[s]+' layers · '+(G.ms[s]==null?'not timed':pct(G.ms[s])+' · '+ms(G.ms[s]));}
function headText(s){return cut(S[G.name[s]],40)+'  ·  '+caption(s);}
function closedSize(g){const n=G.hot[g].length;return [BOX_W,44+n*ROW+(n?4:0)];}
function layout(g,depth){
 const ch=G.children[g],n=ch.length,size=[],sub=[],across=depth%2===0;
 for(let i=0;i<n;i++){const c=ch[i];
  if(c<0&&open.has(-c-1)){const s=layout(-c-1,depth+1);sub[i]=s;size[i]=[Math.max(s.w+2*PAD,BOX_W,7.2*headText(-c-1).length+30),s.h+HEAD+PAD];}
  else size[i]=c<0?closedSize(-c-1):[LAYER_W,LAYER_H];}
 const layer=new Array(n).fill(0),preds=ch.map(()=>[]),E=G.edges[g];
 for(let k=0;k<E.length;k+=2)if(E[k]<E[k+1])preds[E[k+1]].push(E[k]);
 for(let j=0;j<n;j++)for(const a of preds[j])layer[j]=Math.max(layer[j],layer[a]+1);
 const rows=[];for(let i=0;i<n;i++)(rows[layer[i]]=rows[layer[i]]||[]).push(i);
 // A: the flow direction (across at the top level and every other level, down in between); a long
 // flow wraps into several lanes of at most WRAP steps, side by side, so a chain reads like a page.
 const A=across?0:1,B=1-A,gapA=across?GAP_X*2:GAP_Y,gapB=across?GAP_Y:GAP_X*2,wrap=across?WRAP_ACROSS:WRAP_DOWN;
 const steps=rows.filter(r=>r),lanes=[];for(let k=0;k<steps.length;k+=wrap)lanes.push(steps.slice(k,k+wrap));
 const pos=[];let laneAt=0,extentA=0;
 for(const lane of lanes){let span=0,at=0;const len=lane.map(r=>r.reduce((s,i)=>s+size[i][B],0)+gapB*(r.length-1));
  lane.forEach((r,k)=>{span=Math.max(span,len[k]);});
  lane.forEach((r,k)=>{const thick=Math.max(...r.map(i=>size[i][A]));let b=laneAt+(span-len[k])/2;
   for(const i of r){const p=[0,0];p[A]=at+(thick-size[i][A])/2;p[B]=b;pos[i]=p;b+=size[i][B]+gapB;}at+=thick+gapA;});
  extentA=Math.max(extentA,at-gapA);laneAt+=span+gapB*2;}
 const extent=[0,0];extent[A]=extentA;extent[B]=Math.max(0,laneAt-gapB*2);
 return {w:extent[0],h:extent[1],pos:pos,size:size,sub:sub,across:across};}
function draw(g,lay,ox,oy,out){
 const ch=G.children[g],E=G.edges[g];
 for(let k=0;k<E.length;k+=2){const a=E[k],b=E[k+1],pa=lay.pos[a],pb=lay.pos[b],sa=lay.size[a],sb=lay.size[b];
  let d;if(lay.across){const x1=ox+pa[0]+sa[0],y1=oy+pa[1]+Math.min(sa[1],60)/2,x2=ox+pb[0],y2=oy+pb[1]+Math.min(sb[1],60)/2,m=(x1+x2)/2;
   d='M'+x1+','+y1+' C'+m+','+y1+' '+m+','+y2+' '+x2+','+y2;}
  else{const x1=ox+pa[0]+sa[0]/2,y1=oy+pa[1]+sa[1],x2=ox+pb[0]+sb[0]/2,y2=oy+pb[1],m=(y1+y2)/2;
   d='M'+x1+','+y1+' C'+x1+','+m+' '+x2+','+m+' '+x2+','+y2;}
  out.push('<path d="'+d+'" fill="none" stroke="#999" stroke-width="1.4"/>');}
 for(let i=0;i<ch.length;i++){const c=ch[i],x=ox+lay.pos[i][0],y=oy+lay.pos[i][1],w=lay.size[i][0],h=lay.size[i][1];
  if(c>=0){const f=L.ms[c]==null?0:L.ms[c]/maxMs,r=hotRank.get(c),fill=L.ms[c]==null?'#e6e6e6':heat(f);
   const label=S[L.label[c]],op=S[L.op[c]];
   out.push('<g class="l-box" data-l="'+c+'"><title>'+esc(layerName(c)+' ('+op+'): '+ms(L.ms[c])+' '+pct(L.ms[c])+', '+D.kinds[L.kind[c]])+'</title>'+
    '<rect x="'+x+'" y="'+y+'" width="'+w+'" height="'+h+'" rx="5" fill="'+fill+'" stroke="'+(r?'#b00':'#777')+'" stroke-width="'+(r?3:1)+'"/>'+
    '<text x="'+(x+8)+'" y="'+(y+18)+'" font-size="12" font-weight="600" fill="'+ink(f)+'">'+esc((r?'#'+r+' ':'')+cut(label,28))+'</text>'+
    '<text x="'+(x+8)+'" y="'+(y+36)+'" font-size="11" fill="'+ink(f)+'">'+esc((label===op?'':op+' · ')+ms(L.ms[c])+(L.ms[c]==null?'':' · '+pct(L.ms[c])))+'</text></g>');}
  else{const s=-c-1,share=G.ms[s]==null?0:G.ms[s]/total,f=Math.sqrt(share),name=S[G.name[s]];
   const tip=esc(gpath(s).join(' / ')+(G.kind[s]==='run'?' ('+name+')':'')+': '+caption(s)+', '+D.kinds[G.timeKind[s]]);
   if(open.has(s)){out.push('<g><rect x="'+x+'" y="'+y+'" width="'+w+'" height="'+h+'" rx="8" fill="#fff" fill-opacity="0.6" stroke="'+heat(f)+'" stroke-width="3"/>'+
     '<g class="g-head" data-g="'+s+'"><title>'+tip+' (click to close)</title><rect x="'+x+'" y="'+y+'" width="'+w+'" height="'+HEAD+'" rx="8" fill="'+heat(f)+'"/>'+
     '<text x="'+(x+10)+'" y="'+(y+19)+'" font-size="13" font-weight="700" fill="'+ink(f)+'">▾ '+esc(headText(s))+'</text></g></g>');
    draw(s,lay.sub[i],x+(w-lay.sub[i].w)/2,y+HEAD,out);}
   else{const parts=['<g class="g-box" data-g="'+s+'"><title>'+tip+' (click to open)</title><rect x="'+x+'" y="'+y+'" width="'+w+'" height="'+h+'" rx="8" fill="'+heat(f)+'" stroke="#555" stroke-width="1.5"/>'+
     '<text x="'+(x+10)+'" y="'+(y+18)+'" font-size="13" font-weight="700" fill="'+ink(f)+'">▸ '+esc(cut(name,30))+'</text>'+
     '<text x="'+(x+10)+'" y="'+(y+35)+'" font-size="11" fill="'+ink(f)+'">'+esc(caption(s))+'</text>'];
    G.hot[s].forEach((l,k)=>{const r=hotRank.get(l);parts.push('<text class="hot" x="'+(x+14)+'" y="'+(y+52+k*ROW)+'" font-size="11" font-weight="'+(r?700:400)+'" fill="'+ink(f)+'">'+esc(hotText(l,s))+'</text>');});
    parts.push('</g>');out.push(parts.join(''));}}}}
let view={x:0,y:0,k:1},last=null;
const svg=document.createElementNS(NS,'svg');host.appendChild(svg);const vp=document.createElementNS(NS,'g');svg.appendChild(vp);
function apply(){vp.setAttribute('transform','translate('+view.x+','+view.y+') scale('+view.k+')');}
function render(fit){last=layout(0,0);const out=[];draw(0,last,0,0,out);vp.innerHTML=out.join('');if(fit)fitView();else apply();
 document.getElementById('ls-graph-status').textContent=visible()+' boxes shown';}
function fitView(){const W=host.clientWidth||1000,H=host.clientHeight||700;view.k=Math.min(1,(W-20)/Math.max(1,last.w),(H-20)/Math.max(1,last.h));
 view.k=Math.max(view.k,0.4);view.x=Math.max(10,(W-last.w*view.k)/2);view.y=10;apply();}
function visible(){let n=0;const walk=g=>{for(const c of G.children[g]){if(c<0&&open.has(-c-1))walk(-c-1);else n++;}};walk(0);return n;}
function fits(W,H){const l=layout(0,0);return Math.min((W-20)/Math.max(1,l.w),(H-20)/Math.max(1,l.h))>=MIN_READABLE;}
function openHottest(budget){// open the hottest groups first while the picture stays readable without zooming
 const cand=[],W=host.clientWidth||1000,H=host.clientHeight||700;// read once: each read may lay out the page
 for(const c of G.children[0])if(c<0)cand.push(-c-1);let shown=visible();
 while(cand.length){cand.sort((a,b)=>(G.ms[b]||0)-(G.ms[a]||0));const g=cand.shift();
  if(shown-1+G.children[g].length>budget)continue;open.add(g);
  if(open.size>2&&!fits(W,H)){open.delete(g);continue;}// the hottest group opens even when it needs zoomingshown+=G.children[g].length-1;
  for(const c of G.children[g])if(c<0)cand.push(-c-1);}}
function hottestPath(){let g=0;for(;;){open.add(g);let best=null;for(const c of G.children[g])if(c<0&&(best==null||(G.ms[-c-1]||0)>(G.ms[best]||0)))best=-c-1;if(best==null)break;g=best;}}
openHottest(D.initialBoxes);render(true);
host.setAttribute('data-drawn-ms',Math.round(performance.now()));// time from navigation start (benchmarks read it)
let drag=null;
host.addEventListener('pointerdown',e=>{drag={x:e.clientX,y:e.clientY,vx:view.x,vy:view.y,moved:false};host.setPointerCapture(e.pointerId);});
host.addEventListener('pointermove',e=>{if(!drag)return;const dx=e.clientX-drag.x,dy=e.clientY-drag.y;if(Math.abs(dx)+Math.abs(dy)>4)drag.moved=true;
 if(drag.moved){view.x=drag.vx+dx;view.y=drag.vy+dy;apply();}});
host.addEventListener('pointerup',e=>{const d=drag;drag=null;if(!d||d.moved)return;
 const t=document.elementFromPoint(e.clientX,e.clientY);const box=t&&t.closest('[data-g]');if(!box)return;const g=+box.getAttribute('data-g');
 if(open.has(g))open.delete(g);else open.add(g);render(false);});
host.addEventListener('wheel',e=>{e.preventDefault();const r=host.getBoundingClientRect(),px=e.clientX-r.left,py=e.clientY-r.top;
 const k=Math.max(0.05,Math.min(4,view.k*Math.exp(-e.deltaY*0.0015)));view.x=px-(px-view.x)*k/view.k;view.y=py-(py-view.y)*k/view.k;view.k=k;apply();},{passive:false});
document.querySelectorAll('.ls-graph-tools button').forEach(b=>b.addEventListener('click',()=>{const a=b.getAttribute('data-act');
 if(a==='close'){open.clear();open.add(0);}else if(a==='hot')hottestPath();render(true);}));
})();
"""
